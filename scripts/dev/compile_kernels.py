"""Compile the Triton kernels for a GPU architecture on any machine, count their machine code, and model
their cost per SDXL and FLUX step: the numbers behind `triton_kernels._launch_config`.

Triton's wheel brings `ptxas` and `nvdisasm`, so the kernels compile for sm_80 (A100) or sm_90
(H100, H200) without a GPU. For each launch configuration (query rows per program × warps) this
reports what ptxas allots — registers per thread, spill stack, shared memory, and the occupancy
they allow — and the SASS instructions per warp: straight-line (everything outside the threshold
loop) and per threshold pass (the loop body, found as the span of the one backward branch).

The cost model (labelled *modelled* wherever it is quoted): the kernels are instruction-issue
bound, so one call costs `programs × warps × (straight + passes × per pass)` warp-instructions,
issued by 132 SMs × 4 schedulers at 1.98 GHz (H100 SXM boost) at 50 % issue efficiency (stalls on
memory, barriers and dependent math take the other half). Step shapes at 1024², classifier-free
guidance batch where the pipeline uses it:

- SDXL: 70 cross-attention (`attn2`) calls per U-Net step, 77 text keys × 64 dims: 10 at 4,096
  queries × 10 heads (the 640-channel blocks: 2 down transformers × 2 layers + 3 up × 2) and 60 at
  1,024 queries × 20 heads (1280 channels: 2 down × 10 + mid 10 + 3 up × 10), batch 2; the PLADIS
  kernel replaces the stock SDPA call (whose own time is not credited: an upper bound).
- FLUX.1-dev: 19 double-stream blocks, 4,096 image rows × 512 text keys × 128 dims, 24 heads,
  batch 1 (guidance-distilled: no CFG batch); the text-block kernel runs besides the dense SDPA.

Passes per program are data-dependent (the loop runs while any of its rows moves): the model
takes 4 for SDXL (the pass solver proves low-contrast 77-key rows in 4) and 5 for FLUX's 512-key
rows, and `--passes` changes them. Stock step times: SDXL 1024² fp16 U-Net step ~65 ms, FLUX-dev
1024² bf16 transformer step ~190 ms on an H100 (assumed, not measured here).

    python -m scripts.dev.compile_kernels --arch 90            # the chosen configurations, both rules
    python -m scripts.dev.compile_kernels --arch 90 --candidates   # every rows × warps candidate
"""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from attention.kernels import triton_kernels
from attention.kernels.kernel_calls import CrossAttentionCall, TextBlockCall
from attention.settings import PLADISSettings
from scripts.cli.parsers import command_parser

KERNELS = {"cross-attention": triton_kernels._cross_attention_kernel, "text-block": triton_kernels._text_block_kernel}
_BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
# (query rows, warps) per program; long rows also with their whole row in registers ("resident")
CANDIDATES = [(rows, warps) for rows in (16, 32, 64, 128) for warps in (4, 8)]


@dataclass(frozen=True)
class Card:
    """What bounds occupancy and issue on one GPU."""

    name: str
    sms: int
    registers: int = 65536  # per SM
    max_warps: int = 64  # 2,048 threads per SM
    shared: int = 228 * 1024  # per SM (1 KB of it reserved per program)
    schedulers: int = 4  # warp-instructions issued per SM per cycle
    clock_hz: float = 1.98e9
    issue: float = 0.5  # the issue efficiency the model assumes


CARDS = {80: Card("A100", 108, shared=164 * 1024, clock_hz=1.41e9), 90: Card("H100 SXM", 132)}
# (calls per step, batch, heads, query rows, keys, head dim, stock step seconds) at 1024² (see the docstring)
STEPS = {
    "SDXL": ("cross-attention", "float16", [(10, 2, 10, 4096), (60, 2, 20, 1024)], 77, 64, 0.065),
    "FLUX": ("text-block", "bfloat16", [(19, 1, 24, 4096)], 512, 128, 0.190),
}
PASSES = {"SDXL": 4, "FLUX": 5}


class _Recorder:
    """Stands in for a `@triton.jit` kernel: `kernel[grid](*args, **constants)` records the call."""

    def __init__(self, kernel) -> None:
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **constants: self.calls.append((grid, args, constants))


def _step_shapes(rule: str, keys: int, head_dim: int) -> tuple[int, int, int]:
    """(batch, heads, query rows) of the call to compile: the step's own where it is one of STEPS."""
    for step_rule, _, calls, step_keys, step_dim, _ in STEPS.values():
        if (rule, keys, head_dim) == (step_rule, step_keys, step_dim):
            _, batch, heads, queries = calls[0]
            return batch, heads, queries
    return 2, 8, 1024


def _launch_arguments(
    rule: str, keys: int, head_dim: int, dtype: str, arch: int, masked: bool, alpha: float, overrides: dict
):
    """The kernel's arguments as `triton_kernels` launches it on `meta` tensors laid out as the processors
    hand them over ((B, H, N, D) views of (B, N, H, D) memory), so strides and alignments are the real ones."""
    import torch

    batch, heads, queries = _step_shapes(rule, keys, head_dim)
    torch_dtype = getattr(torch, dtype)

    def tokens(count: int) -> torch.Tensor:
        return torch.empty(batch, count, heads, head_dim, device="meta", dtype=torch_dtype).transpose(1, 2)

    mask = torch.zeros(batch, 1, 1, keys, device="meta") if masked else None
    name = "_cross_attention_kernel" if rule == "cross-attention" else "_text_block_kernel"
    recorder, choose = _Recorder(getattr(triton_kernels, name)), triton_kernels._launch_config
    setattr(triton_kernels, name, recorder)
    triton_kernels._launch_config = lambda *shape: choose(*shape[:3], divmod(arch, 10), **overrides)
    try:
        if rule == "cross-attention":
            settings = PLADISSettings(2.0, alpha)
            call = CrossAttentionCall(tokens(queries), tokens(keys), tokens(keys), settings, mask, head_dim**-0.5)
            triton_kernels.triton_pladis_attention(call)
        else:
            joint = queries + keys
            query, key, value = tokens(joint), tokens(joint), tokens(joint)
            log_normaliser = None if masked else torch.empty(batch, heads, joint, device="meta")
            text_mass = torch.empty(batch, heads, joint, device="meta") if masked else None
            text, image = slice(0, keys), slice(keys, joint)
            mask = None if mask is None else mask.expand(batch, 1, joint, keys)
            settings = PLADISSettings(2.0, alpha)
            output = tokens(joint)
            call = TextBlockCall(
                query, key, value, text, image, settings, None, mask, head_dim**-0.5, output, log_normaliser, text_mass
            )
            triton_kernels.triton_text_block_correction_(call)
    finally:
        setattr(triton_kernels, name, recorder.kernel)
        triton_kernels._launch_config = choose
    _, args, constants = recorder.calls[0]
    return recorder.kernel, args, constants


def compile_kernel(
    rule: str,
    keys: int,
    head_dim: int,
    dtype: str = "float16",
    arch: int = 90,
    masked: bool = False,
    alpha: float = 1.5,
    rows: int | None = None,
    warps: int | None = None,
    key_block: int = 128,
):
    """Compile one kernel variant for `sm_{arch}` as Triton's JIT would at the real shapes (integer
    arguments equal to 1 become constants, pointers and multiples of 16 get their alignment), with
    the launch configuration `triton_kernels._launch_config` picks, or `rows` query rows × `warps`
    warps per program and key blocks of `key_block`; returns (compiled kernel, launch constants)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    overrides = dict(rows=rows, warps=warps, key_block=key_block)
    kernel, args, constants = _launch_arguments(rule, keys, head_dim, dtype, arch, masked, alpha, overrides)
    num_warps, num_stages = constants.pop("num_warps"), constants.pop("num_stages", 3)
    names = list(inspect.signature(kernel.fn).parameters)
    signature, constexprs, attrs = {}, dict(constants), {}
    for index, (name, value) in enumerate(zip(names, args, strict=False)):
        kind, specialisation = native_specialize_impl(CUDABackend, value, False, True, True)
        if kind == "constexpr":
            constexprs[name] = value
        elif specialisation:
            attrs[(index,)] = CUDABackend.parse_attr(specialisation)
        signature[name] = kind
    signature.update({name: "constexpr" for name in constants})
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled, dict(constants, **options)


def _tool(name: str, cubin: bytes, *options: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run(
            [str(_BIN / name), *options, str(path)], capture_output=True, text=True, check=True
        ).stdout


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`?\(?(\.L_x_\d+)\)?")


def count_sass(sass: str, block_trips: int = 1) -> dict[str, int]:
    """Executed instructions of a disassembled kernel (`nvdisasm` text) per warp, outside and inside
    its threshold loop. Loops are the spans of backward branches (label to branch, both included).
    The threshold loop is the outermost loop that contains another (the key-block loop of long
    rows), or else the longest; every other loop is a key-block loop that runs `block_trips` times.
    `loop` = one threshold pass, `straight` = everything else up to the last `EXIT` (the trailing
    self-branch, padding and subroutines placed after it are not on the main path)."""
    labels, instructions = {}, []
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        found = _INSTRUCTION.search(line)
        if found:
            instructions.append(found.group(2))
    last_exit = max(i for i, text in enumerate(instructions) if re.search(r"\bEXIT\b", text))
    loops = []
    for index, text in enumerate(instructions[: last_exit + 1]):
        branch = _BRANCH.search(text)
        if branch and labels.get(branch.group(1), index + 1) <= index:
            loops.append((labels[branch.group(1)], index))

    def inside(inner, outer):
        return inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]

    def executed(first: int, last: int, spans: list[tuple[int, int]]) -> int:
        """Instructions in [first, last], the loops among `spans` directly inside it `block_trips` times."""
        nested = [span for span in spans if span != (first, last) and first <= span[0] and span[1] <= last]
        children = [span for span in nested if not any(inside(span, other) for other in nested)]
        plain = sum(1 for i in range(first, last + 1) if instructions[i] != "NOP")
        return plain + sum((block_trips - 1) * executed(*child, spans) for child in children)

    outer = [span for span in loops if not any(inside(span, other) for other in loops)]
    nesting = [span for span in outer if any(inside(other, span) for other in loops)]
    threshold = max(nesting or outer, key=lambda span: span[1] - span[0]) if loops else None
    total = executed(0, last_exit, [span for span in loops if span != threshold])
    loop = executed(*threshold, loops) if threshold else 0
    return {"straight": total - loop, "loop": loop, "total": total}


def occupancy(registers: int, shared: int, warps: int, card: Card) -> tuple[int, float]:
    """(programs per SM, resident warps / max warps): registers are allotted per warp in units of 256,
    shared memory per program plus 1 KB reserved."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_registers = (card.registers // per_warp) // warps
    by_shared = card.shared // (shared + 1024) if shared else 32
    programs = max(0, min(card.max_warps // warps, by_registers, by_shared, 32))
    return programs, programs * warps / card.max_warps


@dataclass
class KernelReport:
    rule: str
    keys: int
    head_dim: int
    dtype: str
    arch: int
    masked: bool
    rows: int
    warps: int
    key_block: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    programs_per_sm: int
    occupancy: float
    straight: int
    per_pass: int


def kernel_report(
    rule: str,
    keys: int,
    head_dim: int,
    dtype: str = "float16",
    arch: int = 90,
    masked: bool = False,
    alpha: float = 1.5,
    rows: int | None = None,
    warps: int | None = None,
    key_block: int = 128,
) -> KernelReport:
    """Compile one variant and report ptxas' allotment, the occupancy and the SASS instruction counts."""
    compiled, config = compile_kernel(rule, keys, head_dim, dtype, arch, masked, alpha, rows, warps, key_block)
    usage = _tool("cuobjdump", compiled.asm["cubin"], "--dump-resource-usage")
    fields = dict(item.split(":") for item in next(line for line in usage.splitlines() if "REG:" in line).split())
    registers, shared = int(fields["REG"]), int(fields["SHARED"]) + compiled.metadata.shared
    counts = count_sass(_tool("nvdisasm", compiled.asm["cubin"], "-c"), config["KEY_BLOCKS"])
    programs, fraction = occupancy(registers, shared, config["num_warps"], CARDS[arch])
    return KernelReport(
        rule,
        keys,
        head_dim,
        dtype,
        arch,
        masked,
        config["BLOCK_M"],
        config["num_warps"],
        config["BLOCK_NK"],
        registers,
        int(fields["STACK"]),
        shared,
        programs,
        fraction,
        counts["straight"],
        counts["loop"],
    )


def resource_usage(*arguments, **options) -> dict:
    """`kernel_report` as a plain dict (what the compile test reads from a subprocess)."""
    return asdict(kernel_report(*arguments, **options))


def modelled_step(report: KernelReport, step: str, passes: int | None = None, card: Card | None = None) -> dict:
    """Warp-instructions of one step's calls of the kernel in `report`, its issue-bound time on `card`
    (the H100 by default) and that time as a fraction of the stock step (see the module docstring)."""
    card = card or CARDS[90]
    passes = PASSES[step] if passes is None else passes
    calls = STEPS[step][2]
    per_warp = report.straight + passes * report.per_pass
    programs = sum(count * batch * heads * math.ceil(queries / report.rows) for count, batch, heads, queries in calls)
    instructions = programs * report.warps * per_warp
    seconds = instructions / (card.sms * card.schedulers * card.clock_hz * card.issue)
    # K and V bytes the programs read (from L2, mostly): whole rows once; key blocks every sweep (the max
    # sweep, each pass, the final one) for K and once for V
    keys, head_dim, element = STEPS[step][3], STEPS[step][4], 4 if report.dtype == "float32" else 2
    key_reads = 1 if report.key_block >= keys else passes + 2
    kv_bytes = programs * keys * head_dim * element * (key_reads + 1)
    return {
        "instructions": instructions,
        "seconds": seconds,
        "fraction": seconds / STEPS[step][5],
        "kv_bytes": kv_bytes,
    }


def _row(report: KernelReport, step: str, passes: int) -> str:
    model = modelled_step(report, step, passes)
    keys = "whole row" if report.key_block >= report.keys else f"blocks of {report.key_block}"
    modelled = (  # the step model is an H100's: sm_80 code gets its counts only
        f"{model['instructions'] / 1e9:.2f} G | {model['seconds'] * 1e3:.2f} ms | +{model['fraction']:.1%}"
        if report.arch == 90
        else "— | — | —"
    )
    return (
        f"| {step} {report.rule} | {report.keys} × {report.head_dim} {report.dtype} | {report.rows} × {report.warps} "
        f"| {keys} | {report.registers} | {report.spill_bytes} | {report.shared_bytes // 1024} KB "
        f"| {report.programs_per_sm} ({report.occupancy:.1%}) | {report.straight} | {report.per_pass} "
        f"| {model['kv_bytes'] / 1e9:.1f} GB | {modelled} |"
    )


def _variants(step: str, candidates: bool) -> list[dict]:
    """The chosen launch configuration, or every candidate (long rows also whole-row resident)."""
    if not candidates:
        return [{}]
    variants = [dict(rows=rows, warps=warps) for rows, warps in CANDIDATES]
    if STEPS[step][3] > 128:
        variants += [dict(rows=rows, warps=warps, key_block=512) for rows, warps in CANDIDATES if rows <= 64]
    return variants


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--arch", type=int, default=90, choices=sorted(CARDS), help="compute capability ×10")
    parser.add_argument("--candidates", action="store_true", help="every rows × warps candidate, not just the chosen")
    parser.add_argument("--passes", type=int, nargs=2, metavar=("SDXL", "FLUX"), help="threshold passes per program")
    args = parser.parse_args(argv)
    passes = dict(zip(PASSES, args.passes or PASSES.values(), strict=True))
    print(
        f"sm_{args.arch}; step model (sm_90 only): an H100 SXM, 132 SMs × 4 schedulers, 1.98 GHz, 50 % issue; passes "
        f"per program: SDXL {passes['SDXL']}, FLUX {passes['FLUX']}; stock steps SDXL 65 ms, FLUX 190 ms"
    )
    print(
        "| step, kernel | keys × dim, dtype | rows × warps | keys per pass | registers | spill B | shared "
        "| programs/SM (occupancy) | SASS straight | SASS per pass | K/V read/step | warp-instr./step "
        "| modelled time/step | modelled overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for step, (rule, dtype, _, keys, head_dim, _) in STEPS.items():
        for variant in _variants(step, args.candidates):
            try:
                report = kernel_report(rule, keys, head_dim, dtype, args.arch, **variant)
            except Exception as error:  # noqa: BLE001 - a candidate ptxas cannot fit is a row of the table
                print(f"| {step} {rule} | {keys} × {head_dim} {dtype} | {variant} | does not compile: {error!s:.80} |")
                continue
            print(_row(report, step, passes[step]), flush=True)


if __name__ == "__main__":
    main()
