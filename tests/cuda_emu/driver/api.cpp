// The driver entry points the emulator implements (every other one of driver_api.inc is a stub that fails with its
// name, unsupported.cpp). Each takes the device lock, checks initialisation, the sticky error and, where the real
// driver needs one, the calling thread's current context, then acts on the model of driver.h. Semantics follow the
// CUDA driver API documentation, "API synchronization behavior" included:
//   - cuMemcpyHtoD(Async) from pageable memory copies the bytes when called; from page-locked memory when it runs
//     (a host change in between is reported);
//   - cuMemcpyDtoH(Async) to pageable memory returns once the copy is done; to page-locked memory, when it runs (the
//     destination reads as NaN until then);
//   - cuMemcpyDtoD, cuMemset* and launches never wait; the synchronous copies use the legacy default stream.
#include "driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EMU_API extern "C" __attribute__((visibility("default"))) CUresult

using emu::Op;
using emu::state;

namespace {

using Lock = std::lock_guard<std::recursive_mutex>;

thread_local CUcontext tls_current = nullptr;
thread_local std::vector<CUcontext> tls_stack;

const size_t TOTAL_MEMORY = size_t(80) << 30;

bool trace() {
    static int t = getenv("MOCO_EMU_TRACE") && atoi(getenv("MOCO_EMU_TRACE")) ? 1 : 0;
    return t;
}

CUresult enter(const char* fn, bool need_context) {
    emu::State& S = state();
    if (trace()) fprintf(stderr, "cuda_emu: %s\n", fn);
    S.calls[fn] += 1;
    if (!S.initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (S.sticky != CUDA_SUCCESS) return S.sticky;
    if (need_context && tls_current == nullptr) return emu::report(CUDA_ERROR_INVALID_CONTEXT, std::string(fn) + " called with no current context on this thread", false);
    return CUDA_SUCCESS;
}

// The start of entry point `fn` (ENTER: the function it stands in): the driver's lock, then enter's checks.
#define ENTER_AS(fn, need_context)                           \
    Lock lock_(state().mu);                                  \
    if (CUresult e_ = enter(fn, need_context)) return e_
#define ENTER(need_context) ENTER_AS(__func__, need_context)

std::string hex(unsigned long long v) {
    char b[32];
    snprintf(b, sizeof b, "0x%llx", v);
    return b;
}

CUresult invalid(const std::string& msg) {
    return emu::report(CUDA_ERROR_INVALID_VALUE, msg, false);
}

// A device range named by a copy or memset: inside one allocation that is not freed (one made by cuMemAllocAsync
// may still be pending: it is made in stream order before the copy runs).
CUresult check_device_range(const char* fn, CUdeviceptr p, size_t n) {
    emu::Allocation* a = emu::find_allocation((uintptr_t)p);
    if (!a) return invalid(std::string(fn) + ": " + emu::describe_address((uintptr_t)p) + " is not device memory");
    if (a->state == emu::Allocation::FREED) return invalid(std::string(fn) + ": " + emu::describe_address((uintptr_t)p) + " (use after free)");
    if ((uintptr_t)p + n > a->base + a->size) return invalid(std::string(fn) + ": " + std::to_string(n) + " bytes at " + emu::describe_address((uintptr_t)p) + " run past the end of the allocation");
    return CUDA_SUCCESS;
}

std::shared_ptr<const std::string> what(std::string s) {
    return std::make_shared<const std::string>(std::move(s));
}

emu::Stream* get_stream(CUstream h, CUresult* err) {
    emu::Stream* s = emu::stream_for(h, err);
    if (!s) emu::report(*err, "invalid stream handle " + hex((unsigned long long)(uintptr_t)h), false);
    return s;
}

CUresult capturing_error(emu::Stream* s, const char* fn) {
    if (s->capture) {
        s->capture->invalidated = true;
        return emu::report(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, std::string(fn) + " on " + emu::stream_name(s->id) + " while it is being captured", false);
    }
    return CUDA_SUCCESS;
}

bool any_capture() {
    for (auto& s : state().streams) {
        if (s->capture) return true;
    }
    return false;
}

// Queues `op` on `s` (legacy-stream work while another stream captures is an implicit dependency: an error).
CUresult queue(emu::Stream* s, Op op) {
    if (s->id == 0 && any_capture()) return emu::report(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "work on the legacy default stream while a stream is being captured", false);
    return emu::enqueue(s, std::move(op));
}

// The host waits for the operation just queued on `s` (a blocking copy).
CUresult wait_last(emu::Stream* s) {
    const Op& last = s->pending.back();
    const uint64_t seq = last.seq;
    const emu::Clock c = last.clock;
    return emu::host_waits_for(s, seq, c);
}

CUresult memcpy_htod(CUdeviceptr dst, const void* src, size_t n, emu::Stream* s, bool sync, const char* fn) {
    if (CUresult e = check_device_range(fn, dst, n)) return e;
    if (n == 0) return CUDA_SUCCESS;
    if (!src) return invalid(std::string(fn) + ": null host pointer");
    Op op(Op::HTOD);
    op.dst = (uintptr_t)dst;
    op.src = (uintptr_t)src;
    op.bytes = n;
    op.pinned = emu::is_pinned(src, n) && !sync;
    if (!op.pinned) op.staged.assign((const unsigned char*)src, (const unsigned char*)src + n);
    op.what = what(std::string(fn) + "(" + std::to_string(n) + " bytes to " + hex(dst) + ")");
    if (CUresult e = queue(s, std::move(op))) return e;
    return sync && !s->capture ? wait_last(s) : CUDA_SUCCESS;
}

CUresult memcpy_dtoh(void* dst, CUdeviceptr src, size_t n, emu::Stream* s, bool sync, const char* fn) {
    if (CUresult e = check_device_range(fn, src, n)) return e;
    if (n == 0) return CUDA_SUCCESS;
    if (!dst) return invalid(std::string(fn) + ": null host pointer");
    Op op(Op::DTOH);
    op.dst = (uintptr_t)dst;
    op.src = (uintptr_t)src;
    op.bytes = n;
    op.pinned = emu::is_pinned(dst, n);
    op.what = what(std::string(fn) + "(" + std::to_string(n) + " bytes from " + hex(src) + ")");
    const bool wait = sync || !op.pinned; // to pageable memory the call returns once the copy is done
    if (op.pinned && !s->capture) memset(dst, 0xff, n); // until the copy runs, the destination holds nothing useful
    if (CUresult e = queue(s, std::move(op))) return e;
    return wait && !s->capture ? wait_last(s) : CUDA_SUCCESS;
}

CUresult memcpy_dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, emu::Stream* s, const char* fn) {
    if (CUresult e = check_device_range(fn, src, n)) return e;
    if (CUresult e = check_device_range(fn, dst, n)) return e;
    if (n == 0) return CUDA_SUCCESS;
    Op op(Op::DTOD);
    op.dst = (uintptr_t)dst;
    op.src = (uintptr_t)src;
    op.bytes = n;
    op.what = what(std::string(fn) + "(" + std::to_string(n) + " bytes " + hex(src) + " -> " + hex(dst) + ")");
    return queue(s, std::move(op));
}

CUresult memset_op(CUdeviceptr dst, uint32_t value, unsigned int elem, size_t count, emu::Stream* s, const char* fn) {
    if ((uintptr_t)dst % elem != 0) return invalid(std::string(fn) + ": " + hex(dst) + " is not aligned to " + std::to_string(elem) + " bytes");
    if (CUresult e = check_device_range(fn, dst, count * elem)) return e;
    if (count == 0) return CUDA_SUCCESS;
    Op op(Op::MEMSET);
    op.dst = (uintptr_t)dst;
    op.value = value;
    op.elem = elem;
    op.bytes = count * elem;
    op.what = what(std::string(fn) + "(" + std::to_string(count * elem) + " bytes at " + hex(dst) + ")");
    return queue(s, std::move(op));
}

emu::Function* find_function(CUfunction f) {
    for (auto& [k, m] : state().modules) {
        if (m->unloaded) continue;
        for (auto& fn : m->functions) {
            if (fn.get() == f) return fn.get();
        }
    }
    return nullptr;
}

emu::Event* find_event(CUevent e) {
    auto& ev = state().events;
    auto it = ev.find(e);
    return it == ev.end() || it->second->destroyed ? nullptr : it->second.get();
}

} // namespace

// ---- initialisation, device, context ----------------------------------------------------------------------------

EMU_API cuInit(unsigned int flags) {
    Lock lock(state().mu);
    if (flags != 0) return invalid("cuInit: flags must be 0");
    emu::State& S = state();
    if (!S.initialized) {
        S.initialized = true;
        CUresult e;
        emu::stream_for(nullptr, &e); // creates the legacy stream
        if (const char* seed = getenv("MOCO_EMU_SEED")) S.seed = strtoull(seed, nullptr, 10);
    }
    return S.sticky;
}

EMU_API cuDriverGetVersion(int* version) {
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = 12080;
    return CUDA_SUCCESS;
}

EMU_API cuDeviceGetCount(int* count) {
    ENTER(false);
    if (!count) return invalid("cuDeviceGetCount: null");
    *count = 1;
    return CUDA_SUCCESS;
}

EMU_API cuDeviceGet(CUdevice* dev, int ordinal) {
    ENTER(false);
    if (!dev) return invalid("cuDeviceGet: null");
    if (ordinal != 0) return emu::report(CUDA_ERROR_INVALID_DEVICE, "cuDeviceGet: the emulated driver has one device, ordinal " + std::to_string(ordinal) + " asked", false);
    *dev = 0;
    return CUDA_SUCCESS;
}

#define CHECK_DEVICE(dev)                                                                                        \
    if ((dev) != 0) return emu::report(CUDA_ERROR_INVALID_DEVICE, std::string(__func__) + ": no device " + std::to_string(dev), false)

EMU_API cuDeviceGetName(char* name, int len, CUdevice dev) {
    ENTER(false);
    CHECK_DEVICE(dev);
    if (!name || len <= 0) return invalid("cuDeviceGetName: no buffer");
    snprintf(name, (size_t)len, "moco cuda_emu (sm_90 emulated on the CPU)");
    return CUDA_SUCCESS;
}

EMU_API cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
    ENTER(false);
    CHECK_DEVICE(dev);
    if (!uuid) return invalid("cuDeviceGetUuid: null");
    memcpy(uuid->bytes, "moco-cuda-emu-00", 16);
    return CUDA_SUCCESS;
}

EMU_API cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) {
    return cuDeviceGetUuid(uuid, dev);
}

EMU_API cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    ENTER(false);
    CHECK_DEVICE(dev);
    if (!bytes) return invalid("cuDeviceTotalMem: null");
    *bytes = TOTAL_MEMORY;
    return CUDA_SUCCESS;
}

EMU_API cuDeviceGetAttribute(int* value, int attrib, CUdevice dev) {
    ENTER(false);
    CHECK_DEVICE(dev);
    if (!value) return invalid("cuDeviceGetAttribute: null");
    switch (attrib) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *value = 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *value = 64; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *value = 2147483647; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *value = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *value = 65535; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *value = 49152; break;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: *value = 65536; break;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *value = 65536; break;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *value = 1980000; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = 132; break;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *value = 2619000; break;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *value = 5120; break;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *value = 50 << 20; break;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *value = 2048; break;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: *value = 2; break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = 9; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *value = 233472; break;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: *value = 65536; break;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: *value = 0; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = 49152; break; // no dynamic shared memory
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *value = 1; break;
    default: return emu::unsupported("cuDeviceGetAttribute(attribute " + std::to_string(attrib) + ")");
    }
    return CUDA_SUCCESS;
}

EMU_API cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
    ENTER(false);
    CHECK_DEVICE(dev);
    if (!ctx) return invalid("cuDevicePrimaryCtxRetain: null");
    state().context.refcount += 1;
    *ctx = &state().context;
    return CUDA_SUCCESS;
}

EMU_API cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    ENTER(false);
    CHECK_DEVICE(dev);
    emu::Context& c = state().context;
    if (c.refcount <= 0) return invalid("cuDevicePrimaryCtxRelease: the primary context is not retained");
    c.refcount -= 1;
    if (c.refcount == 0 && !emu::run_all()) return state().sticky; // the context goes: its work finishes first
    return CUDA_SUCCESS;
}

EMU_API cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
    ENTER(false);
    CHECK_DEVICE(dev);
    if (flags) *flags = state().context.flags;
    if (active) *active = state().context.refcount > 0;
    return CUDA_SUCCESS;
}

EMU_API cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags) {
    ENTER(false);
    CHECK_DEVICE(dev);
    state().context.flags = flags;
    return CUDA_SUCCESS;
}

static CUresult check_context(CUcontext ctx, const char* fn) {
    if (ctx != nullptr && ctx != &state().context) return emu::report(CUDA_ERROR_INVALID_CONTEXT, std::string(fn) + ": not a context of this driver", false);
    return CUDA_SUCCESS;
}

EMU_API cuCtxSetCurrent(CUcontext ctx) {
    ENTER(false);
    if (CUresult e = check_context(ctx, __func__)) return e;
    tls_current = ctx;
    return CUDA_SUCCESS;
}

EMU_API cuCtxGetCurrent(CUcontext* ctx) {
    ENTER(false);
    if (!ctx) return invalid("cuCtxGetCurrent: null");
    *ctx = tls_current;
    return CUDA_SUCCESS;
}

EMU_API cuCtxPushCurrent_v2(CUcontext ctx) {
    ENTER(false);
    if (CUresult e = check_context(ctx, __func__)) return e;
    if (!ctx) return invalid("cuCtxPushCurrent: null context");
    tls_stack.push_back(tls_current);
    tls_current = ctx;
    return CUDA_SUCCESS;
}

EMU_API cuCtxPopCurrent_v2(CUcontext* ctx) {
    ENTER(true);
    if (ctx) *ctx = tls_current;
    tls_current = tls_stack.empty() ? nullptr : tls_stack.back();
    if (!tls_stack.empty()) tls_stack.pop_back();
    return CUDA_SUCCESS;
}

EMU_API cuCtxGetDevice(CUdevice* dev) {
    ENTER(true);
    if (!dev) return invalid("cuCtxGetDevice: null");
    *dev = 0;
    return CUDA_SUCCESS;
}

EMU_API cuCtxGetFlags(unsigned int* flags) {
    ENTER(true);
    if (!flags) return invalid("cuCtxGetFlags: null");
    *flags = state().context.flags;
    return CUDA_SUCCESS;
}

EMU_API cuCtxSetFlags(unsigned int flags) {
    ENTER(true);
    state().context.flags = flags;
    return CUDA_SUCCESS;
}

EMU_API cuCtxGetApiVersion(CUcontext ctx, unsigned int* version) {
    ENTER(false);
    if (CUresult e = check_context(ctx, __func__)) return e;
    if (!version) return invalid("cuCtxGetApiVersion: null");
    *version = 3020;
    return CUDA_SUCCESS;
}

EMU_API cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    ENTER(true);
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

EMU_API cuCtxSynchronize(void) {
    ENTER(true);
    for (auto& s : state().streams) {
        if (CUresult e = capturing_error(s.get(), __func__)) return e;
    }
    if (!emu::run_all()) return state().sticky;
    for (auto& s : state().streams) emu::join(state().host, s->clock);
    return CUDA_SUCCESS;
}

// ---- memory ------------------------------------------------------------------------------------------------------

EMU_API cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    ENTER(true);
    if (free_bytes) *free_bytes = TOTAL_MEMORY / 2;
    if (total) *total = TOTAL_MEMORY;
    return CUDA_SUCCESS;
}

EMU_API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    ENTER(true);
    if (!p) return invalid("cuMemAlloc: null");
    if (bytes == 0) return invalid("cuMemAlloc: 0 bytes");
    emu::Allocation* a = emu::allocate(bytes, emu::Allocation::LIVE, "cuMemAlloc(" + std::to_string(bytes) + " bytes)");
    if (!a) return emu::report(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: out of emulated device memory", false);
    *p = a->base;
    return CUDA_SUCCESS;
}

EMU_API cuMemFree_v2(CUdeviceptr p) {
    ENTER(true);
    if (p == 0) return CUDA_SUCCESS;
    emu::Allocation* a = emu::allocation_at((uintptr_t)p);
    if (!a || a->state == emu::Allocation::FREED || a->free_queued) return invalid("cuMemFree: " + emu::describe_address((uintptr_t)p) + " is not the start of a live allocation (double free?)");
    // the real driver waits for the device before freeing (an implicit synchronisation)
    if (!emu::run_all()) return state().sticky;
    for (auto& s : state().streams) emu::join(state().host, s->clock);
    Op op(Op::FREE);
    op.what = what("cuMemFree(" + hex(p) + ")");
    op.alloc = a;
    op.clock = state().host;
    if (a->size && !emu::check_and_record(a, a->base, a->base + a->size, true, op)) return state().sticky;
    emu::release(a, "cuMemFree");
    return CUDA_SUCCESS;
}

EMU_API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream stream) {
    ENTER(true);
    if (!p) return invalid("cuMemAllocAsync: null");
    CUresult err;
    emu::Stream* s = get_stream(stream, &err);
    if (!s) return err;
    if (s->capture) return emu::unsupported("cuMemAllocAsync inside a stream capture (graph memory nodes)");
    emu::Allocation* a = emu::allocate(bytes, emu::Allocation::PENDING, "cuMemAllocAsync(" + std::to_string(bytes) + " bytes) on " + emu::stream_name(s->id));
    if (!a) return emu::report(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAllocAsync: out of emulated device memory", false);
    Op op(Op::ALLOC);
    op.alloc = a;
    op.what = what("cuMemAllocAsync(" + std::to_string(bytes) + " bytes)");
    if (CUresult e = queue(s, std::move(op))) return e;
    *p = a->base;
    return CUDA_SUCCESS;
}

EMU_API cuMemFreeAsync(CUdeviceptr p, CUstream stream) {
    ENTER(true);
    CUresult err;
    emu::Stream* s = get_stream(stream, &err);
    if (!s) return err;
    if (s->capture) return emu::unsupported("cuMemFreeAsync inside a stream capture (graph memory nodes)");
    emu::Allocation* a = emu::allocation_at((uintptr_t)p);
    if (!a || a->state == emu::Allocation::FREED || a->free_queued) return invalid("cuMemFreeAsync: " + emu::describe_address((uintptr_t)p) + " is not the start of a live allocation (double free?)");
    a->free_queued = true;
    Op op(Op::FREE);
    op.alloc = a;
    op.what = what("cuMemFreeAsync(" + hex(p) + ")");
    return queue(s, std::move(op));
}

EMU_API cuMemAllocHost_v2(void** p, size_t bytes) {
    ENTER(true);
    if (!p) return invalid("cuMemAllocHost: null");
    *p = emu::alloc_pinned(bytes);
    return *p ? CUDA_SUCCESS : emu::report(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAllocHost: out of memory", false);
}

EMU_API cuMemHostAlloc(void** p, size_t bytes, unsigned int flags) {
    ENTER(true);
    if (flags & 2u /* CU_MEMHOSTALLOC_DEVICEMAP */) return emu::unsupported("cuMemHostAlloc with CU_MEMHOSTALLOC_DEVICEMAP (mapped host memory)");
    return cuMemAllocHost_v2(p, bytes);
}

EMU_API cuMemFreeHost(void* p) {
    ENTER(true);
    // the real driver synchronises before freeing page-locked memory
    if (!emu::run_all()) return state().sticky;
    if (!emu::free_pinned(p)) return invalid("cuMemFreeHost: " + hex((unsigned long long)(uintptr_t)p) + " was not allocated by cuMemAllocHost / cuMemHostAlloc");
    return CUDA_SUCCESS;
}

EMU_API cuMemHostRegister_v2(void* p, size_t bytes, unsigned int flags) {
    ENTER(true);
    if (flags & 2u) return emu::unsupported("cuMemHostRegister with CU_MEMHOSTREGISTER_DEVICEMAP");
    if (!p || bytes == 0) return invalid("cuMemHostRegister: empty range");
    return emu::register_pinned(p, bytes) ? CUDA_SUCCESS : emu::report(712 /* HOST_MEMORY_ALREADY_REGISTERED */, "cuMemHostRegister: already registered", false);
}

EMU_API cuMemHostUnregister(void* p) {
    ENTER(true);
    if (!emu::run_all()) return state().sticky;
    return emu::unregister_pinned(p) ? CUDA_SUCCESS : emu::report(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "cuMemHostUnregister: not registered", false);
}

#define STREAM_OR_RETURN(s, h)                                                                                   \
    CUresult err_;                                                                                               \
    emu::Stream* s = get_stream(h, &err_);                                                                       \
    if (!s) return err_

EMU_API cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    ENTER(true);
    STREAM_OR_RETURN(s, nullptr);
    return memcpy_htod(dst, src, n, s, true, __func__);
}

EMU_API cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    ENTER(true);
    STREAM_OR_RETURN(s, nullptr);
    return memcpy_dtoh(dst, src, n, s, true, __func__);
}

EMU_API cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    ENTER(true);
    STREAM_OR_RETURN(s, nullptr);
    return memcpy_dtod(dst, src, n, s, __func__);
}

EMU_API cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    return memcpy_htod(dst, src, n, s, false, __func__);
}

EMU_API cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    return memcpy_dtoh(dst, src, n, s, false, __func__);
}

EMU_API cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    return memcpy_dtod(dst, src, n, s, __func__);
}

// cuMemcpy / cuMemcpyAsync: the direction from the addresses (unified addressing).
static CUresult memcpy_unified(CUdeviceptr dst, CUdeviceptr src, size_t n, emu::Stream* s, bool sync, const char* fn) {
    const bool dd = emu::is_device((uintptr_t)dst), sd = emu::is_device((uintptr_t)src);
    if (dd && sd) return memcpy_dtod(dst, src, n, s, fn);
    if (dd) return memcpy_htod(dst, (const void*)(uintptr_t)src, n, s, sync, fn);
    if (sd) return memcpy_dtoh((void*)(uintptr_t)dst, src, n, s, sync, fn);
    return emu::unsupported(std::string(fn) + " between two host addresses");
}

EMU_API cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    ENTER(true);
    STREAM_OR_RETURN(s, nullptr);
    return memcpy_unified(dst, src, n, s, true, __func__);
}

EMU_API cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    return memcpy_unified(dst, src, n, s, false, __func__);
}

// cuMemsetD8/16/32_v2 (on the legacy stream) and cuMemsetD8/16/32Async: n elements of `elem` bytes set to v.
static CUresult memset_entry(const char* fn, CUdeviceptr dst, uint32_t v, unsigned int elem, size_t n, CUstream stream) {
    ENTER_AS(fn, true);
    STREAM_OR_RETURN(s, stream);
    return memset_op(dst, v, elem, n, s, fn);
}

EMU_API cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    return memset_entry(__func__, dst, v, 1, n, nullptr);
}

EMU_API cuMemsetD16_v2(CUdeviceptr dst, unsigned short v, size_t n) {
    return memset_entry(__func__, dst, v, 2, n, nullptr);
}

EMU_API cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n) {
    return memset_entry(__func__, dst, v, 4, n, nullptr);
}

EMU_API cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream stream) {
    return memset_entry(__func__, dst, v, 1, n, stream);
}

EMU_API cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream stream) {
    return memset_entry(__func__, dst, v, 2, n, stream);
}

EMU_API cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream stream) {
    return memset_entry(__func__, dst, v, 4, n, stream);
}

// ---- streams and events -----------------------------------------------------------------------------------------

EMU_API cuStreamCreate(CUstream* out, unsigned int flags) {
    ENTER(true);
    if (!out) return invalid("cuStreamCreate: null");
    if (flags & ~1u) return invalid("cuStreamCreate: unknown flags " + hex(flags));
    *out = emu::new_stream(flags);
    return CUDA_SUCCESS;
}

EMU_API cuStreamCreateWithPriority(CUstream* out, unsigned int flags, int priority) {
    (void)priority; // one queue: priorities do not change the order the emulator runs work in
    return cuStreamCreate(out, flags);
}

EMU_API cuStreamDestroy_v2(CUstream stream) {
    ENTER(true);
    if (stream == nullptr || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD) return invalid("cuStreamDestroy: a default stream cannot be destroyed");
    STREAM_OR_RETURN(s, stream);
    if (s->capture) return emu::report(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "cuStreamDestroy of a stream that is being captured", false);
    s->destroyed = true; // its queued work still runs (the driver releases the stream once it is done)
    return CUDA_SUCCESS;
}

EMU_API cuStreamGetFlags(CUstream stream, unsigned int* flags) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (!flags) return invalid("cuStreamGetFlags: null");
    *flags = s->flags;
    return CUDA_SUCCESS;
}

EMU_API cuStreamGetPriority(CUstream stream, int* priority) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (!priority) return invalid("cuStreamGetPriority: null");
    *priority = 0;
    return CUDA_SUCCESS;
}

EMU_API cuStreamGetCtx(CUstream stream, CUcontext* ctx) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (!ctx) return invalid("cuStreamGetCtx: null");
    *ctx = &state().context;
    return CUDA_SUCCESS;
}

EMU_API cuStreamSynchronize(CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (CUresult e = capturing_error(s, __func__)) return e;
    const emu::Clock c = s->clock;
    return emu::host_waits_for(s, emu::clock_at(c, s->id), c);
}

EMU_API cuStreamQuery(CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (CUresult e = capturing_error(s, __func__)) return e;
    if (!s->pending.empty() && !s->query_answered_not_ready) {
        s->query_answered_not_ready = true; // a GPU may still be busy: the first query says so
        return CUDA_ERROR_NOT_READY;
    }
    s->query_answered_not_ready = false;
    const emu::Clock c = s->clock;
    return emu::host_waits_for(s, emu::clock_at(c, s->id), c);
}

EMU_API cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    emu::Event* e = find_event(event);
    if (!e) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: invalid event", false);
    if (flags != 0) return emu::unsupported("cuStreamWaitEvent flags " + hex(flags));
    if (s->capture) {
        if (e->captured_in == s->capture) return CUDA_SUCCESS; // recorded earlier in this one-stream capture
        return emu::unsupported("cuStreamWaitEvent inside a stream capture on an event recorded outside it (cross-stream capture)");
    }
    if (!e->recorded) return CUDA_SUCCESS; // waiting on a never-recorded event is a no-op
    emu::join(s->clock, e->clock);
    return CUDA_SUCCESS;
}

EMU_API cuEventCreate(CUevent* out, unsigned int flags) {
    ENTER(true);
    if (!out) return invalid("cuEventCreate: null");
    auto e = std::make_unique<emu::Event>();
    e->flags = flags;
    emu::Event* p = e.get();
    state().events[p] = std::move(e);
    *out = p;
    return CUDA_SUCCESS;
}

EMU_API cuEventDestroy_v2(CUevent event) {
    ENTER(true);
    emu::Event* e = find_event(event);
    if (!e) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: invalid event", false);
    e->destroyed = true; // kept: queued recordings may still name it
    return CUDA_SUCCESS;
}

EMU_API cuEventRecord(CUevent event, CUstream stream) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    emu::Event* e = find_event(event);
    if (!e) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: invalid event", false);
    if (s->capture) e->captured_in = s->capture;
    Op op(Op::RECORD);
    op.event = e;
    op.what = what("cuEventRecord");
    return queue(s, std::move(op));
}

EMU_API cuEventRecordWithFlags(CUevent event, CUstream stream, unsigned int flags) {
    if (flags != 0) return emu::unsupported("cuEventRecordWithFlags flags");
    return cuEventRecord(event, stream);
}

EMU_API cuEventQuery(CUevent event) {
    ENTER(true);
    emu::Event* e = find_event(event);
    if (!e) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventQuery: invalid event", false);
    if (!e->recorded || e->done_generation >= e->generation) return CUDA_SUCCESS;
    if (!e->query_answered_not_ready) {
        e->query_answered_not_ready = true;
        return CUDA_ERROR_NOT_READY;
    }
    e->query_answered_not_ready = false;
    return emu::host_waits_for(state().streams[e->stream].get(), e->seq, e->clock);
}

EMU_API cuEventSynchronize(CUevent event) {
    ENTER(true);
    emu::Event* e = find_event(event);
    if (!e) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventSynchronize: invalid event", false);
    if (!e->recorded) return CUDA_SUCCESS;
    if (e->captured_in) return emu::report(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuEventSynchronize on an event recorded in a stream capture", false);
    return emu::host_waits_for(state().streams[e->stream].get(), e->seq, e->clock);
}

// The emulated time between two events: the host's clock when each recording ran (the emulation runs a stream's
// work when something waits for it, so an interval is the emulated time of the work between the two records).
// As the driver: both must have been recorded with timing (no CU_EVENT_DISABLE_TIMING), outside a capture, and
// have completed (else CUDA_ERROR_NOT_READY).
EMU_API cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    ENTER(true);
    if (!ms) return invalid("cuEventElapsedTime: null");
    emu::Event* a = find_event(start);
    emu::Event* b = find_event(end);
    if (!a || !b) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: invalid event", false);
    if ((a->flags | b->flags) & 0x2u /* CU_EVENT_DISABLE_TIMING */) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event created with CU_EVENT_DISABLE_TIMING", false);
    if (!a->recorded || !b->recorded || a->captured_in || b->captured_in) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event not recorded on a stream", false);
    if (a->done_generation < a->generation || b->done_generation < b->generation) return CUDA_ERROR_NOT_READY;
    *ms = (float)(b->done_ms - a->done_ms);
    return CUDA_SUCCESS;
}

EMU_API cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
    return cuEventElapsedTime(ms, start, end);
}

// ---- modules and launches ----------------------------------------------------------------------------------------

EMU_API cuModuleLoadData(CUmodule* out, const void* image) {
    ENTER(true);
    if (!out) return invalid("cuModuleLoadData: null");
    auto m = std::make_unique<emu::Module>();
    const std::string err = emu::load_module(image, *m);
    if (!err.empty()) return emu::report(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: " + err, false);
    emu::Module* p = m.get();
    state().modules[p] = std::move(m);
    *out = p;
    return CUDA_SUCCESS;
}

EMU_API cuModuleLoadDataEx(CUmodule* out, const void* image, unsigned int n_options, void* options, void** values) {
    (void)n_options, (void)options, (void)values; // JIT options do not apply: nothing is compiled
    return cuModuleLoadData(out, image);
}

EMU_API cuModuleUnload(CUmodule module) {
    ENTER(true);
    auto it = state().modules.find(module);
    if (it == state().modules.end() || it->second->unloaded) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: invalid module", false);
    if (!emu::run_all()) return state().sticky; // queued launches of its kernels run first
    it->second->unloaded = true;
    return CUDA_SUCCESS;
}

EMU_API cuModuleGetFunction(CUfunction* out, CUmodule module, const char* name) {
    ENTER(true);
    auto it = state().modules.find(module);
    if (it == state().modules.end() || it->second->unloaded) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: invalid module", false);
    if (!out || !name) return invalid("cuModuleGetFunction: null");
    for (auto& f : it->second->functions) {
        if (f->name == name) {
            *out = f.get();
            return CUDA_SUCCESS;
        }
    }
    return emu::report(CUDA_ERROR_NOT_FOUND, std::string("cuModuleGetFunction: the module has no kernel named ") + name, false);
}

EMU_API cuFuncGetAttribute(int* value, int attrib, CUfunction fn) {
    ENTER(true);
    emu::Function* f = find_function(fn);
    if (!f) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuFuncGetAttribute: invalid function", false);
    if (!value) return invalid("cuFuncGetAttribute: null");
    switch (attrib) {
    case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = (int)f->max_threads; break;
    case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *value = (int)f->static_shared; break;
    case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *value = 0; break;
    case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *value = 0; break;
    case CU_FUNC_ATTRIBUTE_NUM_REGS: *value = f->regs; break;
    case CU_FUNC_ATTRIBUTE_PTX_VERSION: *value = 90; break;
    case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *value = 90; break;
    case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *value = 0; break;
    default: return emu::unsupported("cuFuncGetAttribute(attribute " + std::to_string(attrib) + ")");
    }
    return CUDA_SUCCESS;
}

EMU_API cuFuncSetAttribute(CUfunction fn, int attrib, int value) {
    ENTER(true);
    if (!find_function(fn)) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: invalid function", false);
    if (attrib == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES && value > 0) return emu::unsupported("dynamic shared memory");
    return CUDA_SUCCESS; // carveout and cache preferences do not change results
}

EMU_API cuFuncSetCacheConfig(CUfunction fn, int config) {
    ENTER(true);
    (void)config;
    return find_function(fn) ? CUDA_SUCCESS : emu::report(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetCacheConfig: invalid function", false);
}

EMU_API cuLaunchKernel(CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream stream, void** params, void** extra) {
    ENTER(true);
    emu::Function* f = find_function(fn);
    if (!f) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: invalid function handle", false);
    STREAM_OR_RETURN(s, stream);
    const std::string name = "launch of " + f->name + " on grid (" + std::to_string(gx) + ", " + std::to_string(gy) + ", " + std::to_string(gz) + ") x block (" + std::to_string(bx) + ", " + std::to_string(by) + ", " + std::to_string(bz) + ")";
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) return invalid(name + ": an empty grid or block");
    if (gx > 2147483647u || gy > 65535u || gz > 65535u) return invalid(name + ": the grid exceeds CUDA's limits");
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024) return invalid(name + ": the block exceeds CUDA's limits");
    if (threads > f->max_threads) return emu::report(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, name + ": " + std::to_string(threads) + " threads per block exceed the kernel's __launch_bounds__(" + std::to_string(f->max_threads) + ")", false);
    if (shared_bytes != 0) return emu::unsupported(name + " with " + std::to_string(shared_bytes) + " bytes of dynamic shared memory");
    if (extra != nullptr) return emu::unsupported(name + " with parameters in `extra` (CU_LAUNCH_PARAM_BUFFER_POINTER)");
    if (!params && !f->param_sizes.empty()) return invalid(name + ": null kernelParams for a kernel with parameters");
    Op op(Op::LAUNCH);
    op.fn = f;
    op.grid[0] = gx, op.grid[1] = gy, op.grid[2] = gz;
    op.block[0] = bx, op.block[1] = by, op.block[2] = bz;
    for (size_t i = 0; i < f->param_sizes.size(); ++i) {
        if (!params[i]) return invalid(name + ": kernelParams[" + std::to_string(i) + "] is null");
        const unsigned char* v = (const unsigned char*)params[i];
        op.params.emplace_back(v, v + f->param_sizes[i]); // the driver copies the values at launch
    }
    op.what = what(name);
    return queue(s, std::move(op));
}

// ---- stream capture and graphs ----------------------------------------------------------------------------------

EMU_API cuStreamBeginCapture_v2(CUstream stream, int mode) {
    ENTER(true);
    (void)mode;
    STREAM_OR_RETURN(s, stream);
    if (s->id == 0) return emu::report(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture on the legacy default stream", false);
    if (s->capture) return emu::report(CUDA_ERROR_ILLEGAL_STATE, "cuStreamBeginCapture: the stream is already being captured", false);
    if (state().refuse_begin > 0) {
        --state().refuse_begin;
        return emu::report(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture: refused (planted by moco_emu_refuse_captures)", false);
    }
    auto g = std::make_unique<emu::Graph>();
    g->capture_stream = s->id;
    s->capture = g.get();
    emu::Graph* p = g.get();
    state().graphs[p] = std::move(g);
    return CUDA_SUCCESS;
}

EMU_API cuStreamEndCapture(CUstream stream, CUgraph* out) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (!out) return invalid("cuStreamEndCapture: null");
    if (!s->capture) return emu::report(CUDA_ERROR_ILLEGAL_STATE, "cuStreamEndCapture: the stream is not being captured", false);
    emu::Graph* g = s->capture;
    s->capture = nullptr;
    if (state().refuse_end > 0) {
        --state().refuse_end;
        g->invalidated = true;
    }
    if (g->invalidated) {
        *out = nullptr;
        return emu::report(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "cuStreamEndCapture: the capture was invalidated by an illegal call during it", false);
    }
    *out = g;
    return CUDA_SUCCESS;
}

EMU_API cuStreamIsCapturing(CUstream stream, int* status) {
    ENTER(true);
    STREAM_OR_RETURN(s, stream);
    if (!status) return invalid("cuStreamIsCapturing: null");
    *status = s->capture ? (s->capture->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE) : CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

EMU_API cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph graph, unsigned long long flags) {
    ENTER(true);
    (void)flags;
    auto it = state().graphs.find(graph);
    if (it == state().graphs.end()) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuGraphInstantiate: invalid graph", false);
    if (!out) return invalid("cuGraphInstantiate: null");
    auto x = std::make_unique<emu::GraphExec>();
    x->ops = it->second->ops;
    emu::GraphExec* p = x.get();
    state().graph_execs[p] = std::move(x);
    *out = p;
    return CUDA_SUCCESS;
}

EMU_API cuGraphLaunch(CUgraphExec exec, CUstream stream) {
    ENTER(true);
    auto it = state().graph_execs.find(exec);
    if (it == state().graph_execs.end()) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuGraphLaunch: invalid graph exec", false);
    STREAM_OR_RETURN(s, stream);
    for (const Op& op : it->second->ops) {
        Op copy = op;
        copy.what = what("graph replay: " + *op.what);
        if (CUresult e = queue(s, std::move(copy))) return e;
    }
    return CUDA_SUCCESS;
}

EMU_API cuGraphUpload(CUgraphExec exec, CUstream stream) {
    ENTER(true);
    if (!state().graph_execs.count(exec)) return emu::report(CUDA_ERROR_INVALID_HANDLE, "cuGraphUpload: invalid graph exec", false);
    CUresult err;
    return get_stream(stream, &err) ? CUDA_SUCCESS : err;
}

EMU_API cuGraphExecDestroy(CUgraphExec exec) {
    ENTER(true);
    return state().graph_execs.erase(exec) ? CUDA_SUCCESS : emu::report(CUDA_ERROR_INVALID_HANDLE, "cuGraphExecDestroy: invalid graph exec", false);
}

EMU_API cuGraphDestroy(CUgraph graph) {
    ENTER(true);
    for (auto& s : state().streams) {
        if (s->capture == graph) return emu::report(CUDA_ERROR_ILLEGAL_STATE, "cuGraphDestroy of a graph still being captured", false);
    }
    return state().graphs.erase(graph) ? CUDA_SUCCESS : emu::report(CUDA_ERROR_INVALID_HANDLE, "cuGraphDestroy: invalid graph", false);
}

// ---- error strings -----------------------------------------------------------------------------------------------

static const char* error_name(CUresult e) {
    switch (e) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
    case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
    case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
    case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
    case CUDA_ERROR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
    case CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: return "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT";
    default: return "CUDA_ERROR_UNKNOWN";
    }
}

EMU_API cuGetErrorName(CUresult e, const char** out) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    *out = error_name(e);
    return CUDA_SUCCESS;
}

EMU_API cuGetErrorString(CUresult e, const char** out) {
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    switch (e) {
    case CUDA_ERROR_ILLEGAL_STATE: *out = "the emulated driver found a race between streams (see stderr)"; break;
    case CUDA_ERROR_ILLEGAL_ADDRESS: *out = "an illegal memory access was encountered (see the emulated driver's report on stderr)"; break;
    case CUDA_ERROR_NOT_SUPPORTED: *out = "operation not supported by the emulated CUDA driver (see stderr)"; break;
    default: *out = error_name(e);
    }
    return CUDA_SUCCESS;
}

// ---- the emulator's own interface (tests/cuda_emu/driver.rs) ---------------------------------------------------------

extern "C" __attribute__((visibility("default"))) int moco_emu_configure(const char* library_paths) {
    Lock lock(state().mu);
    const std::string err = emu::load_libraries(library_paths ? library_paths : "");
    if (!err.empty()) {
        emu::report(CUDA_ERROR_NOT_FOUND, err, false);
        return 1;
    }
    return 0;
}

// Everything reported so far (errors, unsupported calls), one per line. The pointer stays valid until the next call.
extern "C" __attribute__((visibility("default"))) const char* moco_emu_log(void) {
    Lock lock(state().mu);
    static std::string copy;
    copy = state().log;
    return copy.c_str();
}

// "name count\n" per entry of `counts`, in a buffer of its own that stays valid until the next call with it.
static const char* counts_text(const std::map<std::string, uint64_t>& counts, std::string& out) {
    out.clear();
    for (auto& [k, n] : counts) out += k + " " + std::to_string(n) + "\n";
    return out.c_str();
}

// "kernel launches\n" per kernel that ran.
extern "C" __attribute__((visibility("default"))) const char* moco_emu_launch_counts(void) {
    Lock lock(state().mu);
    static std::string out;
    return counts_text(state().launches, out);
}

// "entry-point calls\n" per driver entry point called so far (every call that reached ENTER's checks).
extern "C" __attribute__((visibility("default"))) const char* moco_emu_call_counts(void) {
    Lock lock(state().mu);
    static std::string out;
    return counts_text(state().calls, out);
}

// Plants refusals: the next `begin` cuStreamBeginCapture calls fail (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED), and the
// next `end` captures end invalidated (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED), as a real driver answers work it cannot
// capture. Process-wide: a test that plants them runs alone in its process.
extern "C" __attribute__((visibility("default"))) void moco_emu_refuse_captures(uint32_t begin, uint32_t end) {
    Lock lock(state().mu);
    state().refuse_begin = begin;
    state().refuse_end = end;
}

// For the emulator's own tests: forget a sticky error, queued work and the log, as a fresh device would.
extern "C" __attribute__((visibility("default"))) void moco_emu_reset(void) {
    Lock lock(state().mu);
    emu::State& S = state();
    S.sticky = CUDA_SUCCESS;
    S.log.clear();
    for (auto& s : S.streams) {
        s->pending.clear();
        s->capture = nullptr;
    }
}
