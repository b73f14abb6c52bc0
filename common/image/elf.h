// Private to ferry_image: ELF cubins — how far one extends, and what kernels
// and globals it defines.
//
// Facts relied on (CUDA 12/13 cubins, ELF64 little-endian, both cubin ABIs):
//  * A kernel is a FUNC symbol whose st_other carries STO_CUDA_ENTRY (0x10).
//    Device functions of -rdc builds also get `.text.<name>` and
//    `.nv.info.<name>` sections, so the sections alone do not tell.
//  * `.nv.info.<kernel>` is a list of attributes {u8 format, u8 attribute,
//    u16 value-or-length}: formats 1-3 (NVAL, BVAL, HVAL) are 4 bytes in all,
//    format 4 (SVAL) is followed by `length` bytes. Parameters come from
//    EIATTR_KPARAM_INFO (0x17), or EIATTR_KPARAM_INFO_V2 (0x45), which nvcc
//    13 emits instead when a parameter is too large for 0x17's 14-bit size.
//  * Device variables are OBJECT symbols (type 13 in -rdc cubins) in
//    `.nv.global` (zero-filled), `.nv.global.init` or `.nv.constantN`.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>

#include "common/image/module_image.h"
#include "common/status.h"

namespace ferry::image::internal {

// True when `bytes` begins with the ELF magic (\x7fELF).
bool HasElfMagic(std::span<const uint8_t> bytes);

// Measures the ELF image at `base` from its headers alone: the furthest of
// the section-header table, the program-header table and any section's data
// (cuBLAS ships cubins whose program headers follow the section headers).
// Reads the ELF header and the section-header table only; the caller vouches
// that those are readable.
Status MeasureElf(const uint8_t* base, uint64_t* size);

// MeasureElf for an image already in memory as `bytes`: reads nothing
// outside it, and fails if the headers place any of the image past its end.
Status MeasureElfIn(std::span<const uint8_t> bytes, uint64_t* size);

// Sets `*out` to the cubin's kernels and device variables, each name once.
// Fails, leaving `*out` untouched, on any malformed or truncated structure.
Status ParseCubin(std::span<const uint8_t> bytes, ImageLayout* out);

}  // namespace ferry::image::internal
