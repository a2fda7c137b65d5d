// What one running launch has touched: per allocation, the lowest and highest byte read and written (filled by the
// access hooks in memory.cpp, checked for races by streams.cpp after the launch).
#pragma once

#include "driver.h"

namespace emu {

struct Touch {
    Allocation* alloc;
    uintptr_t base, end; // the allocation's bytes (copied: the hooks test them on every access)
    uintptr_t rlo, rhi; // bytes read: [rlo, rhi), empty when rlo >= rhi
    uintptr_t wlo, whi; // bytes written
};

struct LaunchAccesses {
    const MocoEmuLibrary* lib;
    std::vector<Touch> touched;
    Touch* last = nullptr;       // the allocation the previous access hit
    bool illegal_address = false; // the launch failed on a bad access (not a barrier error)
};

// The running launch, or null.
extern LaunchAccesses* g_launch;

} // namespace emu
