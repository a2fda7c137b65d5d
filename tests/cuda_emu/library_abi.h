// The interface between the emulated CUDA driver (tests/cuda_emu/driver/) and a kernel library: one kernels/*.cu
// file compiled by g++ against cuda_emu.h with MOCO_CUDA_EMU_LIBRARY defined, as a shared object. The driver
// dlopens the libraries, finds each module's kernels by name in them and runs launches through `launch`.
//
// Memory accesses inside a library are instrumented (g++ -fsanitize=kernel-address in outline mode: every load and
// store calls __asan_{load,store}N_noabort, which the driver defines). The driver checks each access to device
// memory against its allocations and records the byte ranges each launch reads and writes; on a bad access it
// calls `fail`, which ends the launch with the message.
#pragma once

#include <stddef.h>

#define MOCO_EMU_LIBRARY_ABI 1u

struct MocoEmuKernelInfo {
    const char* name;
    size_t nparams;
    // per parameter: its size in bytes (from the kernel's own C++ signature) and whether it is a pointer
    const size_t* sizes;
    const bool* pointers;
    unsigned int launch_bounds; // __launch_bounds__'s first argument, 0 when none
};

struct MocoEmuLibrary {
    unsigned int abi; // MOCO_EMU_LIBRARY_ABI
    size_t nkernels;
    const MocoEmuKernelInfo* kernels;
    // Runs kernel `kernel` on grid x block with `args` (one pointer per parameter, to its value, as
    // cuLaunchKernel's kernelParams). Returns 0, or 1 with the reason in `err` (a deadlock at a barrier, a
    // barrier after some threads returned, a bad access the driver reported through `fail`, ...).
    int (*launch)(size_t kernel, const unsigned int grid[3], const unsigned int block[3], void** args, unsigned long long seed, char* err, size_t errlen);
    // Ends the running launch with `msg` (prefixed with the block and thread); only valid inside `launch`.
    void (*fail)(const char* msg);
    // Whether a launch of this library is running on the calling thread.
    int (*in_launch)(void);
};

extern "C" const MocoEmuLibrary* moco_emu_library(void);
