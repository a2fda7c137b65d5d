// Modules: a module image is what NVRTC produced (a cubin, or PTX text). Its kernels are found by name in the
// kernel libraries (kernels/*.cu compiled by g++ against cuda_emu.h), which run them. The parameter layout comes
// from the image itself (the cubin's EIATTR_KPARAM_INFO records, or the PTX .entry's .param list) and must match
// the C++ signature the library was compiled from, so a launch marshals exactly what the real driver would.
#include "driver.h"

#include <dlfcn.h>
#include <string.h>

#include <set>
#include <sstream>

namespace emu {

std::string load_libraries(const std::string& paths) {
    State& S = state();
    std::istringstream in(paths);
    std::string path;
    while (std::getline(in, path)) {
        if (path.empty()) continue;
        bool known = false;
        for (auto& l : S.libraries) known |= l.path == path;
        if (known) continue;
        void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) return std::string("cannot load kernel library ") + path + ": " + dlerror();
        auto entry = (const MocoEmuLibrary* (*)(void))dlsym(h, "moco_emu_library");
        if (!entry) return "kernel library " + path + " has no moco_emu_library()";
        const MocoEmuLibrary* lib = entry();
        if (!lib || lib->abi != MOCO_EMU_LIBRARY_ABI) return "kernel library " + path + " was built for another library ABI";
        S.libraries.push_back(KernelLibrary{path, lib});
    }
    return "";
}

// ---- the image -------------------------------------------------------------------------------------------------

struct ImageKernel {
    std::string name;
    std::vector<size_t> param_sizes;
    bool have_params = false;
    size_t shared = 0;
    int regs = 0;
    unsigned int max_threads = 0;
};

template <typename T> static T rd(const unsigned char* p) {
    T v;
    memcpy(&v, p, sizeof v);
    return v;
}

// A cubin: ELF64 with a section .text.<kernel> per kernel, .nv.info.<kernel> (parameter records), .nv.shared.<kernel>,
// and the global .nv.info (register counts by symbol).
static std::string parse_cubin(const unsigned char* img, std::vector<ImageKernel>& out) {
    if (img[4] != 2 || img[5] != 1) return "not a little-endian ELF64 image";
    const uint64_t shoff = rd<uint64_t>(img + 0x28);
    const uint16_t shentsize = rd<uint16_t>(img + 0x3a), shnum = rd<uint16_t>(img + 0x3c), shstrndx = rd<uint16_t>(img + 0x3e);
    if (shentsize != 64 || shstrndx >= shnum) return "unexpected ELF section header layout";
    struct Sec {
        std::string name;
        uint32_t type;
        uint64_t off, size;
        uint32_t link;
    };
    std::vector<Sec> secs(shnum);
    const unsigned char* sh = img + shoff;
    const uint64_t stroff = rd<uint64_t>(sh + (size_t)shstrndx * 64 + 24);
    for (size_t i = 0; i < shnum; ++i) {
        const unsigned char* h = sh + i * 64;
        secs[i] = Sec{(const char*)img + stroff + rd<uint32_t>(h), rd<uint32_t>(h + 4), rd<uint64_t>(h + 24), rd<uint64_t>(h + 32), rd<uint32_t>(h + 40)};
    }
    std::map<std::string, size_t> index;
    for (const Sec& s : secs) {
        if (s.name.rfind(".text.", 0) == 0) {
            index[s.name.substr(6)] = out.size();
            ImageKernel k;
            k.name = s.name.substr(6);
            out.push_back(k);
        }
    }
    std::vector<std::string> symbols; // names by symbol index, for the global .nv.info
    for (const Sec& s : secs) {
        if (s.type != 2 /* SHT_SYMTAB */ || s.link >= secs.size()) continue;
        const char* names = (const char*)img + secs[s.link].off;
        for (uint64_t o = 0; o + 24 <= s.size; o += 24) symbols.push_back(names + rd<uint32_t>(img + s.off + o));
    }
    for (const Sec& s : secs) {
        const bool global_info = s.name == ".nv.info";
        const bool kernel_info = s.name.rfind(".nv.info.", 0) == 0;
        if (s.name.rfind(".nv.shared.", 0) == 0) {
            auto it = index.find(s.name.substr(11));
            if (it != index.end()) out[it->second].shared = s.size;
        }
        if (!global_info && !kernel_info) continue;
        ImageKernel* k = nullptr;
        if (kernel_info) {
            auto it = index.find(s.name.substr(9));
            if (it == index.end()) continue;
            k = &out[it->second];
        }
        std::map<size_t, size_t> params; // ordinal -> size
        const unsigned char* p = img + s.off;
        for (uint64_t i = 0; i + 4 <= s.size;) {
            const unsigned char fmt = p[i], attr = p[i + 1];
            uint64_t len = 4, payload = i + 2;
            if (fmt == 4) { // EIFMT_SVAL: u16 size, then the payload
                len = 4 + rd<uint16_t>(p + i + 2);
                payload = i + 4;
            }
            if (i + len > s.size) return "truncated " + s.name;
            if (k && attr == 0x17 && fmt == 4) { // EIATTR_KPARAM_INFO: index, ordinal, offset, then size << 18
                const size_t ordinal = rd<uint16_t>(p + payload + 4);
                params[ordinal] = (rd<uint32_t>(p + payload + 8) >> 18) & 0x3fff;
                k->have_params = true;
            } else if (k && attr == 0x05 && fmt == 4) { // EIATTR_MAX_THREADS: x, y, z
                k->max_threads = rd<uint32_t>(p + payload) * rd<uint32_t>(p + payload + 4) * rd<uint32_t>(p + payload + 8);
            } else if (global_info && attr == 0x2f && fmt == 4) { // EIATTR_REGCOUNT: symbol, registers
                const uint32_t sym = rd<uint32_t>(p + payload);
                if (sym < symbols.size()) {
                    auto it = index.find(symbols[sym]);
                    if (it != index.end()) out[it->second].regs = (int)rd<uint32_t>(p + payload + 4);
                }
            }
            i += len;
        }
        if (k) {
            for (auto& [ordinal, size] : params) {
                if (ordinal != k->param_sizes.size()) return ".nv.info." + k->name + ": parameter ordinals are not 0..n-1";
                k->param_sizes.push_back(size);
            }
        }
    }
    return "";
}

// PTX text: `.entry name(` then `.param <type> [.align A] <name>[N]`, ...
static std::string parse_ptx(const char* text, std::vector<ImageKernel>& out) {
    const std::string s(text);
    size_t pos = 0;
    while ((pos = s.find(".entry ", pos)) != std::string::npos) {
        pos += 7;
        const size_t open = s.find('(', pos), close = s.find(')', pos);
        if (open == std::string::npos || close == std::string::npos || close < open) return "malformed .entry";
        ImageKernel k;
        std::istringstream name(s.substr(pos, open - pos));
        name >> k.name;
        k.have_params = true;
        std::string params = s.substr(open + 1, close - open - 1);
        size_t p = 0;
        while ((p = params.find(".param", p)) != std::string::npos) {
            p += 6;
            const size_t end = params.find(',', p);
            std::istringstream decl(params.substr(p, end == std::string::npos ? std::string::npos : end - p));
            std::string tok, type;
            size_t elems = 1;
            while (decl >> tok) {
                if (tok == ".align" || tok == ".ptr" || tok == ".global" || tok == ".const" || tok == ".shared" || tok == ".local") {
                    if (tok == ".align") decl >> tok;
                } else if (tok[0] == '.') {
                    type = tok;
                } else {
                    const size_t br = tok.find('[');
                    if (br != std::string::npos) elems = strtoull(tok.c_str() + br + 1, nullptr, 10);
                }
            }
            size_t bits = 0;
            for (size_t i = 0; i < type.size(); ++i) {
                if (isdigit((unsigned char)type[i])) {
                    bits = strtoull(type.c_str() + i, nullptr, 10);
                    break;
                }
            }
            if (bits == 0) return "cannot read the type of a parameter of " + k.name + ": " + type;
            k.param_sizes.push_back(bits / 8 * elems);
            if (end == std::string::npos) break;
            p = end;
        }
        out.push_back(k);
        pos = close;
    }
    return "";
}

std::string load_module(const void* image, Module& out) {
    State& S = state();
    if (!image) return "null module image";
    const unsigned char* img = (const unsigned char*)image;
    std::vector<ImageKernel> kernels;
    std::string err;
    if (memcmp(img, "\x7f" "ELF", 4) == 0) {
        err = parse_cubin(img, kernels);
    } else if (strstr((const char*)img, ".entry") != nullptr || strstr((const char*)img, ".version") != nullptr) {
        err = parse_ptx((const char*)img, kernels);
    } else {
        err = "neither a cubin (ELF) nor PTX text";
    }
    if (!err.empty()) return err;
    if (kernels.empty()) return "the image has no kernels";
    // the one library that holds every kernel of the image
    std::set<std::string> names;
    for (auto& k : kernels) names.insert(k.name);
    const KernelLibrary* lib = nullptr;
    for (auto& l : S.libraries) {
        std::set<std::string> have;
        for (size_t i = 0; i < l.lib->nkernels; ++i) have.insert(l.lib->kernels[i].name);
        bool all = true;
        for (auto& n : names) all &= have.count(n) > 0;
        if (all) {
            lib = &l;
            break;
        }
    }
    if (!lib) {
        std::string list;
        for (auto& n : names) list += (list.empty() ? "" : ", ") + n;
        return "no kernel library emulates the module's kernels (" + list + "); libraries loaded: " + std::to_string(S.libraries.size()) + " (did the test build them from kernels/?)";
    }
    for (auto& k : kernels) {
        size_t idx = 0;
        while (std::string(lib->lib->kernels[idx].name) != k.name) ++idx;
        const MocoEmuKernelInfo& info = lib->lib->kernels[idx];
        if (!k.have_params) k.param_sizes.clear();
        if (k.param_sizes.size() != info.nparams) {
            return "kernel " + k.name + ": the module image declares " + std::to_string(k.param_sizes.size()) + " parameters, its C++ signature in " + lib->path + " " + std::to_string(info.nparams);
        }
        auto f = std::make_unique<Function>();
        f->module = &out;
        f->name = k.name;
        f->library = lib;
        f->kernel = idx;
        for (size_t i = 0; i < info.nparams; ++i) {
            if (k.param_sizes[i] != info.sizes[i]) {
                return "kernel " + k.name + " parameter " + std::to_string(i) + ": " + std::to_string(k.param_sizes[i]) + " bytes in the module image, " + std::to_string(info.sizes[i]) + " in the C++ signature g++ compiled (a struct laid out differently?)";
            }
            f->param_sizes.push_back(k.param_sizes[i]);
            f->param_pointer.push_back(info.pointers[i]);
        }
        f->max_threads = info.launch_bounds ? info.launch_bounds : (k.max_threads ? k.max_threads : 1024);
        f->static_shared = k.shared;
        f->regs = k.regs;
        out.functions.push_back(std::move(f));
    }
    return "";
}

} // namespace emu
