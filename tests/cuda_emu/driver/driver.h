// The emulated CUDA driver's model of one device: memory, streams, events, modules, graphs, and the deferred,
// stream-ordered execution of the work queued on them. See README.md next to this file for what it checks.
//
// Ordering is tracked with vector clocks, one component per stream (the legacy NULL stream is stream 0): every
// operation carries the clock of its stream when it was queued, events carry the clock they recorded, and waits
// and host synchronisations join clocks. Work runs only when the host needs it (a synchronisation, a blocking
// copy, a query), one operation at a time, each after the operations its clock orders it after. Every access a
// kernel or copy makes to device memory is recorded with its operation's clock; an access that conflicts with an
// earlier one from another stream that its clock does not order it after is a race, reported as an error.
#pragma once

#include "../library_abi.h"
#include "cuda_abi.h"

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace emu {

using Clock = std::vector<uint64_t>; // indexed by stream id; missing components are 0

uint64_t clock_at(const Clock& c, size_t i);
void join(Clock& into, const Clock& from);

// ---- memory ------------------------------------------------------------------------------------------------------

// One access that ran, kept for race detection: bytes [lo, hi) of an allocation, by operation `seq` of `stream`.
struct Access {
    uint32_t stream;
    uint64_t seq;
    uintptr_t lo, hi;
    bool write;
    std::shared_ptr<const std::string> what; // the operation, for the report
};

struct Allocation {
    uint64_t id;
    uintptr_t base;
    size_t size;
    enum State { PENDING, LIVE, FREED } state;
    std::string origin;   // e.g. "cuMemAllocAsync(1024 bytes) on stream 1"
    std::string freed_by; // set when FREED
    bool free_queued = false;
    std::vector<Access> accesses;
};

// The allocation whose [base, base + size) holds `addr` (or, for `size == 0` allocations, whose base is `addr`),
// whatever its state; null if none.
Allocation* find_allocation(uintptr_t addr);
// The allocation starting exactly at `addr`.
Allocation* allocation_at(uintptr_t addr);
// Reserves device memory (filled with 0xFF bytes: NaN as f32) and registers it, PENDING or LIVE.
Allocation* allocate(size_t bytes, Allocation::State state, std::string origin);
void release(Allocation* a, std::string freed_by);
bool is_device(uintptr_t addr);
// Page-locked host memory (cuMemAllocHost, cuMemHostAlloc, cuMemHostRegister): whether [p, p + n) lies in it.
bool is_pinned(const void* p, size_t n);
void* alloc_pinned(size_t bytes);
bool free_pinned(void* p);
bool register_pinned(void* p, size_t bytes);
bool unregister_pinned(void* p);

// Describes where `addr` is relative to the allocations ("12 bytes past the end of allocation #3 (...)").
std::string describe_address(uintptr_t addr);

// ---- modules ---------------------------------------------------------------------------------------------------

struct KernelLibrary {
    std::string path;
    const MocoEmuLibrary* lib;
};

struct Function {
    Module* module;
    std::string name;
    const KernelLibrary* library;
    size_t kernel; // index in library->lib->kernels
    // parameter layout as the module image declares it (cubin EIATTR_KPARAM_INFO, or the PTX .entry)
    std::vector<size_t> param_sizes;
    std::vector<bool> param_pointer; // from the C++ signature
    unsigned int max_threads;        // __launch_bounds__, else 1024
    size_t static_shared;            // .nv.shared.<name>, 0 for PTX
    int regs;                        // EIATTR_REGCOUNT, 0 for PTX
};

struct Module {
    std::vector<std::unique_ptr<Function>> functions;
    bool unloaded = false;
};

// Loads the kernel libraries listed in `dir`/libraries.txt (one path per line). Returns an error message or "".
std::string load_libraries(const std::string& dir);
// Parses a module image (cubin ELF or PTX text), resolves its kernels in the libraries. Error message or "".
std::string load_module(const void* image, Module& out);

// ---- streams, operations, events -------------------------------------------------------------------------------

struct Event;

struct Op {
    enum Kind { LAUNCH, HTOD, DTOH, DTOD, MEMSET, ALLOC, FREE, RECORD } kind;
    explicit Op(Kind k) : kind(k) {}
    uint32_t stream = 0;
    uint64_t seq = 0;
    Clock clock;
    std::shared_ptr<const std::string> what;
    // LAUNCH: the function, geometry and a copy of the parameter values (as the driver copies them at launch)
    Function* fn = nullptr;
    unsigned int grid[3] = {1, 1, 1}, block[3] = {1, 1, 1};
    std::vector<std::vector<unsigned char>> params;
    // HTOD / DTOH / DTOD / MEMSET
    uintptr_t dst = 0, src = 0;
    size_t bytes = 0;
    std::vector<unsigned char> staged; // HTOD from pageable memory: the bytes, copied when queued
    bool pinned = false;               // HTOD from / DTOH to page-locked memory: read / written when it runs
    uint64_t checksum = 0;             // HTOD from page-locked memory: of the source when queued
    uint32_t value = 0;
    unsigned int elem = 1;
    // ALLOC / FREE
    Allocation* alloc = nullptr;
    // RECORD
    Event* event = nullptr;
    uint64_t record_generation = 0;
};

struct Graph;

struct Stream {
    uint32_t id;
    unsigned int flags;
    bool blocking;   // synchronises with the legacy stream (not CU_STREAM_NON_BLOCKING)
    bool destroyed = false;
    Clock clock;
    std::deque<Op> pending;
    uint64_t executed = 0; // seq of the last operation that ran
    bool query_answered_not_ready = false;
    Graph* capture = nullptr; // while capturing: the graph the work goes to
};

struct Event {
    unsigned int flags;
    bool destroyed = false;
    bool recorded = false;
    uint32_t stream = 0;
    uint64_t seq = 0;
    Clock clock;
    uint64_t generation = 0;     // recordings so far
    uint64_t done_generation = 0; // the recording that last ran
    double done_ms = 0.0;         // when it ran: the host's steady clock in milliseconds (cuEventElapsedTime)
    bool query_answered_not_ready = false;
    Graph* captured_in = nullptr; // recorded inside this stream capture
};

struct Graph {
    std::vector<Op> ops; // in capture order; replayed on one stream
    uint32_t capture_stream = 0;
    bool invalidated = false;
};

struct GraphExec {
    std::vector<Op> ops;
};

struct Context {
    int refcount = 0;
    unsigned int flags = 0;
};

// ---- the device state ------------------------------------------------------------------------------------------

struct State {
    std::recursive_mutex mu;
    bool initialized = false;
    CUresult sticky = CUDA_SUCCESS; // a failed launch or a detected error: every later call returns it
    std::string log;                // every error and unsupported call, in order
    std::vector<std::unique_ptr<Stream>> streams; // by id; 0 is the legacy NULL stream
    std::map<Event*, std::unique_ptr<Event>> events;
    std::map<Module*, std::unique_ptr<Module>> modules;
    std::map<Graph*, std::unique_ptr<Graph>> graphs;
    std::map<GraphExec*, std::unique_ptr<GraphExec>> graph_execs;
    Clock host; // what the host has seen complete
    Context context;
    uint64_t launch_counter = 0;
    // refusals planted by a test (moco_emu_refuse_captures): the next `refuse_begin` cuStreamBeginCapture calls fail,
    // and the next `refuse_end` captures end invalidated, as a real driver refuses work it cannot capture
    uint32_t refuse_begin = 0;
    uint32_t refuse_end = 0;
    uint64_t seed = 1;
    std::map<std::string, uint64_t> launches; // kernel -> launches that ran
    std::map<std::string, uint64_t> calls;    // driver entry point -> calls made (launches counted when issued)
    std::vector<KernelLibrary> libraries;
    std::string library_dir;
};

State& state();

// Records an error: message to stderr and the log; with `sticky`, every later call fails with `code` and the
// queued work is dropped, as after a fault on a GPU. Returns `code`.
CUresult report(CUresult code, const std::string& msg, bool sticky);
// An unsupported entry point or argument: named on stderr and in the log, CUDA_ERROR_NOT_SUPPORTED.
CUresult unsupported(const std::string& what);

Stream* stream_for(CUstream handle, CUresult* err); // resolves 0, CU_STREAM_LEGACY, CU_STREAM_PER_THREAD, handles
Stream* new_stream(unsigned int flags);
std::string stream_name(uint32_t id);

// Queues `op` on `s` (or records it into the capture); fills its clock and sequence number.
CUresult enqueue(Stream* s, Op op);
// Runs the operations of stream `s` up to `seq` and everything they are ordered after. False on an error.
bool run_until(Stream* s, uint64_t seq);
bool run_all();
// Host synchronisation: runs the work, then the host clock joins `c`.
CUresult host_waits_for(Stream* s, uint64_t seq, const Clock& c);
bool any_pending();
uint64_t host_checksum(const void* p, size_t n);

// Runs one operation (called by run_until). False on an error (reported, sticky).
bool execute(Op& op);

// Race detection: checks an access of `op` against the recorded ones and records it.
bool check_and_record(Allocation* a, uintptr_t lo, uintptr_t hi, bool write, const Op& op);

} // namespace emu
