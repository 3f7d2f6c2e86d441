"""Compile the Triton kernels for a GPU architecture on any machine, and report what ptxas allots.

Triton's wheel brings `ptxas`, so the kernels can be compiled for sm_80 (A100), sm_89 (L4, RTX 4090)
or sm_90 (H100, H200) without a GPU: this catches compile errors and shows registers, spill stack
and shared memory per launch configuration (the numbers behind `triton_kernels._launch_config`).
"""

from __future__ import annotations

import inspect
import os
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from attention import triton_kernels
from scripts.cli.parsers import command_parser

KERNELS = {"cross-attention": triton_kernels._cross_attention_kernel, "text-block": triton_kernels._text_block_kernel}
_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def _signature(kernel, dtype: str, constants: dict) -> dict[str, str]:
    """Triton's type signature: tensors in `dtype` (mask and row values float32), scalars int32/float32."""
    signature = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in ("m_ptr", "r_ptr") else f"*{_TYPES[dtype]}"
        else:
            signature[name] = "fp32" if name in ("pladis_scale", "scale") else "i32"
    return signature


def resource_usage(
    rule: str, keys: int, head_dim: int, dtype: str = "float16", arch: int = 90, masked: bool = True, alpha: float = 1.5
) -> dict[str, int]:
    """Compile one kernel variant for `sm_{arch}` and return ptxas' REG / STACK / SHARED numbers."""
    kernel = KERNELS[rule]
    config = triton_kernels._launch_config(keys, head_dim, head_dim)
    num_warps = config.pop("num_warps")
    dot = triton_kernels._DOT_IEEE.value if dtype == "float32" else triton_kernels._DOT_HALF.value
    constants = dict(HAS_MASK=masked, SPARSEMAX=alpha == 2.0, DOT=dot, **config)
    if rule == "text-block":
        constants["ROW_IS_LSE"] = not masked
    source = ASTSource(kernel, _signature(kernel, dtype, constants), constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        report = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    line = next(line for line in report.splitlines() if "REG:" in line)
    fields = dict(item.split(":") for item in line.split() if ":" in item)
    return {
        "registers": int(fields["REG"]),
        "stack": int(fields["STACK"]),
        "shared": int(fields["SHARED"]) + compiled.metadata.shared,
        "warps": num_warps,
        "block_m": config["BLOCK_M"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10: 80, 89, 90")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    print(
        f"| sm_{args.arch} | keys | head dim | dtype | mask | BLOCK_M × warps | registers | spill stack B | shared B |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rule in KERNELS:
        for keys, head_dim in ((77, 64), (300, 72), (512, 128)):
            for dtype in ("float16", "bfloat16", "float32"):
                masked = rule == "cross-attention"
                usage = resource_usage(rule, keys, head_dim, dtype, args.arch, masked)
                print(
                    f"| {rule} | {keys} | {head_dim} | {dtype} | {masked} | {usage['block_m']} × {usage['warps']} "
                    f"| {usage['registers']} | {usage['stack']} | {usage['shared']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
