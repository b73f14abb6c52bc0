// Private to ferry_image: PTX text — recognising it, and reading kernel
// parameter layouts and module-scope variables from it.
//
// The parser knows only what ferry needs: module-scope `.entry` signatures
// (parameter offsets follow PTX's rule: each parameter at the next multiple
// of its alignment, which is its `.align` or else its type's size) and
// module-scope `.global` / `.const` declarations (size, and initial bytes
// when every initialiser is a literal). Function bodies are skipped.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>

#include "common/image/module_image.h"
#include "common/status.h"

namespace ferry::image::internal {

// True for bytes that may appear in PTX text: printable ASCII, whitespace,
// and bytes >= 0x80 (UTF-8 in comments and file names).
bool IsPtxTextByte(uint8_t c);

// True when `text` holds only PTX text bytes and the directives every PTX
// module carries (`.version`, `.target`).
bool LooksLikePtx(std::string_view text);

// Sets `*out` to the kernels and variables that `text` defines, each name
// once. Fails, leaving `*out` untouched, on a declaration it cannot lay out.
Status ParsePtx(std::string_view text, ImageLayout* out);

// Appends to `*out` the module-scope functions and variables `text` gives
// other modules (`.visible`; `.weak` and `.common` as weak) and those it takes
// from them (`.extern .func`, `.extern .global`, `.extern .const`). Function
// bodies are skipped; text it cannot read adds nothing.
void ScanPtxLinkSymbols(std::string_view text, LinkSymbols* out);

}  // namespace ferry::image::internal
