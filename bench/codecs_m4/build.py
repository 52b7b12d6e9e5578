"""Build and run bench/codecs_m4/main.c on QEMU's mps2-an386 (Cortex-M4): decode instructions.

QEMU models no cycle counter; the instruction-counting TCG plugin of the firmware
(``firmware/tools/qemu_insn.c``, built here with the host's gcc against the QEMU plugin API
headers in ``../shared/third_party/qemu-plugin-api``) counts the instructions between the two
``codec_marker`` calls, i.e. the decode of the whole transfer (output compared with the model
as it comes, the same few instructions per byte for every decoder).

Third-party decoders are compiled from their sources, never copied into this repository:
heatshrink from a folder holding ``heatshrink_decoder.c`` (the heatshrink2 sdist's
``_heatshrink/``, or a detools checkout's ``c/heatshrink/``) with a generated static config;
detools from a checkout's ``c/`` folder (``DETOOLS_C_DIR``), with its own heatshrink config
(window 2^8, lookahead 2^7) and CRLE, LZMA off.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIRMWARE = ROOT / "firmware"
PLUGIN_API = ROOT.parent / "shared" / "third_party" / "qemu-plugin-api"
CODECS = {"ours_lz": 1, "ours_delta": 2, "heatshrink": 3, "detools": 4}
ARCH = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"]
CFLAGS = [*ARCH, "-Os", "-std=c99", "-ffunction-sections", "-fdata-sections", "-w"]
_COUNT = re.compile(r"qemu_insn: total=(\d+) marked=(\d+) pairs=(\d+)")


def missing_tools() -> list[str]:
    """Return what is missing to run on QEMU (empty: everything is there)."""
    need = ["arm-none-eabi-gcc", "arm-none-eabi-nm", "qemu-system-arm", "gcc", "pkg-config"]
    gone = [tool for tool in need if shutil.which(tool) is None]
    if not (PLUGIN_API / "qemu-plugin.h").exists():
        gone.append(str(PLUGIN_API / "qemu-plugin.h"))
    return gone


def plugin(workdir: Path) -> Path:
    """Build the instruction-counting plugin into ``workdir``; return its path."""
    out = workdir / "qemu_insn.so"
    if not out.exists():
        glib = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], capture_output=True,
                              text=True, check=False).stdout.split()
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{PLUGIN_API}", *glib,
                        str(FIRMWARE / "tools" / "qemu_insn.c"), "-o", str(out)], check=True)
    return out


def _heatshrink_sources(src: Path, dest: Path, window_sz2: int, lookahead_sz2: int) -> list[str]:
    """Copy heatshrink's decoder into ``dest`` with a static config; return C files, includes."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("heatshrink_decoder.c", "heatshrink_decoder.h", "heatshrink_common.h"):
        shutil.copy(src / name, dest / name)
    (dest / "heatshrink_config.h").write_text(
        "#ifndef HEATSHRINK_CONFIG_H\n#define HEATSHRINK_CONFIG_H\n"
        "#define HEATSHRINK_DYNAMIC_ALLOC 0\n#define HEATSHRINK_STATIC_INPUT_BUFFER_SIZE 64\n"
        f"#define HEATSHRINK_STATIC_WINDOW_BITS {window_sz2}\n"
        f"#define HEATSHRINK_STATIC_LOOKAHEAD_BITS {lookahead_sz2}\n"
        "#define HEATSHRINK_DEBUGGING_LOGS 0\n#define HEATSHRINK_USE_INDEX 0\n#endif\n")
    return [str(dest / "heatshrink_decoder.c"), f"-I{dest}"]


def build(workdir: Path, codec: str, transfer: bytes, model: bytes, base: bytes, *,
          heatshrink_src: Path | None = None, heatshrink_params: tuple[int, int] = (8, 4),
          detools_src: Path | None = None) -> Path:
    """Build the image decoding ``transfer`` into ``model`` with ``codec``; return the ELF."""
    tag = f"{codec}-{len(transfer)}-{heatshrink_params[0]}"
    out = workdir / tag
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("transfer.bin", transfer), ("model.bin", model), ("base.bin", base)):
        (out / name).write_bytes(data)
    extra: list[str] = []
    if codec in ("ours_lz", "ours_delta"):
        extra = [str(FIRMWARE / "src" / "lz.c"), str(FIRMWARE / "src" / "delta.c"),
                 str(FIRMWARE / "src" / "sha.c"), f"-I{FIRMWARE / 'include'}"]
    elif codec == "heatshrink":
        assert heatshrink_src is not None
        extra = _heatshrink_sources(heatshrink_src, out / "hs", *heatshrink_params)
    elif codec == "detools":
        assert detools_src is not None
        dest = out / "detools"
        shutil.copytree(detools_src, dest, dirs_exist_ok=True)
        extra = [str(dest / "detools.c"), str(dest / "heatshrink" / "heatshrink_decoder.c"),
                 f"-I{dest}", f"-I{dest / 'heatshrink'}", "-DDETOOLS_CONFIG_FILE_IO=0",
                 "-DDETOOLS_CONFIG_COMPRESSION_LZMA=0"]
    elf = out / "codec.elf"
    subprocess.run(["arm-none-eabi-gcc", *CFLAGS, f"-DCODEC={CODECS[codec]}",
                    f'-DTRANSFER_FILE="{out / "transfer.bin"}"', f'-DMODEL_FILE="{out / "model.bin"}"',
                    f'-DBASE_FILE="{out / "base.bin"}"', str(HERE / "main.c"), str(HERE / "blobs.S"),
                    *extra, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
                    "-Wl,--gc-sections", f"-T{HERE / 'link.ld'}", "-o", str(elf)], check=True)
    return elf


def decode_instructions(elf: Path, plugin_so: Path) -> int:
    """Run ``elf`` in QEMU under the plugin; return the instructions of the decode."""
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    marker = next(int(f[0], 16) for f in (line.split() for line in symbols.splitlines())
                  if len(f) == 3 and f[2] == "codec_marker")
    command = ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
               "-icount", "shift=0", "-kernel", str(elf), "-plugin",
               f"{plugin_so},marker={marker:#x}", "-semihosting-config", "enable=on,target=native"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    found = _COUNT.search(done.stderr)
    if done.returncode != 0 or not found or int(found.group(3)) != 1:
        raise RuntimeError(f"{elf.parent.name}: rc {done.returncode}\n{done.stdout[-500:]}"
                           f"{done.stderr[-1500:]}")
    return int(found.group(2))
