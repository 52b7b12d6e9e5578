"""Write Monocypher's monocypher.c with its field multiplication in a compact form.

    python tools/monocypher_small.py third_party/monocypher/monocypher.c build/gen/monocypher_small.c

Monocypher 4 unrolls fe_mul (1,380 bytes on a Cortex-M3) and has a dedicated fe_sq (924
bytes): fast, and big for a firmware that verifies one signature per update and signs one
enrollment. This copy (made at build time; Monocypher itself is never committed) replaces:

- fe_mul's body by the same schoolbook products and sums in a loop (radix 2^25.5: a product of
  two odd limbs is doubled, a product that wraps past limb 9 is multiplied by 19), then
  FE_CARRY's twelve carries in FE_CARRY's order from a table: the same 64-bit sums and the
  same carries, so the same limbs;
- fe_sq's body by fe_mul(h, f, f) (Monocypher's comment: "we could use fe_mul() for this");
- fe_mul_small's body by its ten products in a loop and the same carries (shared with fe_mul).

Every other byte is Monocypher's. The loops depend on limb indices only (no secret-dependent
branch or address). Anything unexpected in the source (another version) stops the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FE_MUL_SMALL = """// Compact (tools/monocypher_small.py): FE_CARRY's twelve carries, in its order, in a loop.
static void fe_carry_loop(fe h, i64 t[10])
{
\tstatic const u8 carry_order[12] = {0, 4, 1, 5, 2, 6, 3, 7, 4, 8, 9, 0};
\tFOR (n, 0, 12) {
\t\tsize_t i     = carry_order[n];
\t\tint    shift = 26 - (int)(i & 1);           // even limbs 26 bits, odd limbs 25
\t\ti64    c     = (t[i] + ((i64)1 << (shift - 1))) >> shift;
\t\tt[i] -= c * ((i64)1 << shift);
\t\tt[i == 9 ? 0 : i + 1] += i == 9 ? c * 19 : c;
\t}
\tFOR (i, 0, 10) {
\t\th[i] = (i32)t[i];
\t}
}

static void fe_mul_small(fe h, const fe f, i32 g)
{
\t// Compact (tools/monocypher_small.py): the same ten products, then FE_CARRY's carries.
\ti64 t[10];
\tFOR (i, 0, 10) {
\t\tt[i] = f[i] * (i64)g;
\t}
\tfe_carry_loop(h, t);
}
"""

FE_MUL = """static void fe_mul(fe h, const fe f, const fe g)
{
\t// Compact (tools/monocypher_small.py): Monocypher's products and sums, then its
\t// FE_CARRY's twelve carries in the same order, in loops.
\ti64 t[10] = {0};
\tFOR (i, 0, 10) {
\t\tFOR (j, 0, 10) {
\t\t\tsize_t k  = i + j;
\t\t\ti32    fi = f[i] * (i32)(1 + (i & j & 1)); // odd limb * odd limb: doubled
\t\t\ti32    gj = g[j];
\t\t\tif (k >= 10) {                             // wraps: 2^255 = 19
\t\t\t\tk  -= 10;
\t\t\t\tgj *= 19;
\t\t\t}
\t\t\tt[k] += fi * (i64)gj;
\t\t}
\t}
\tfe_carry_loop(h, t);
}
"""

FE_SQ = """static void fe_sq(fe h, const fe f)
{
\tfe_mul(h, f, f); // compact (tools/monocypher_small.py)
}
"""


def replace_function(source: str, signature: str, body: str) -> str:
    """Replace the one definition that starts with ``signature`` (up to its closing brace)."""
    pattern = re.compile(re.escape(signature) + r"\n\{\n.*?\n\}\n", re.DOTALL)
    found = pattern.findall(source)
    if len(found) != 1:
        raise SystemExit(f"monocypher_small: expected one {signature!r}, found {len(found)}")
    return pattern.sub(lambda _: body, source, count=1)


def main(argv: list[str]) -> int:
    source = Path(argv[1]).read_text()
    if "#define FE_CARRY" not in source or "#define FOR(" not in source:
        raise SystemExit("monocypher_small: FE_CARRY or FOR missing: another Monocypher?")
    source = replace_function(source, "static void fe_mul_small(fe h, const fe f, i32 g)",
                              FE_MUL_SMALL)
    source = replace_function(source, "static void fe_mul(fe h, const fe f, const fe g)", FE_MUL)
    source = replace_function(source, "static void fe_sq(fe h, const fe f)", FE_SQ)
    Path(argv[2]).write_text(source)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
