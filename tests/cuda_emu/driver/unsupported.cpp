// Every driver entry point cudarc can load (driver_api.inc) exists in the emulated libcuda, so cudarc never panics on
// a missing symbol. The ones api.cpp does not implement are these weak stubs: a call names itself on stderr and in
// the emulator's log, and fails with CUDA_ERROR_NOT_SUPPORTED. It never succeeds silently.
//
// A stub takes no parameters: whatever the caller passes in registers is ignored (the x86-64 System V calling
// convention lets a callee ignore its arguments), and all of them return CUresult.
#include "driver.h"

#define X(name)                                                                                              \
    extern "C" __attribute__((weak, visibility("default"))) CUresult name() {                                \
        std::lock_guard<std::recursive_mutex> lock(emu::state().mu);                                        \
        return emu::unsupported(#name " (not implemented by the emulated driver: tests/cuda_emu/README.md)"); \
    }
#include "driver_api.inc"
#undef X
