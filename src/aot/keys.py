"""The sample-set key and the seed ranges: one format, used by the library and the workflow.

A sample set is named by its sampler setting, `heun-n18-rho7`, with `-churn<S>` when S_churn > 0
and a `dg<aot|plain>-` prefix for sets guided by a discriminator. Its files live at
`samples/<model>/<key>/rep<r>.npz`; repeat r of n images covers seeds [r*n, (r+1)*n). The workflow
imports this module for its paths and wildcard constraints, so the two can never drift apart.
"""

from __future__ import annotations

import re

from .errors import UserError

SOLVERS = ("heun", "euler")
GUIDANCE = ("aot", "plain")

# Wildcard constraints of the workflow (no anchors: Snakemake anchors them itself).
NUMBER = r"\d+(\.\d+)?"
SOLVER_RE = "|".join(SOLVERS)
GUIDANCE_RE = "|".join(GUIDANCE)
CHURN_RE = rf"(-churn{NUMBER})?"
SAMPLER_RE = rf"({SOLVER_RE})-n\d+-rho{NUMBER}{CHURN_RE}"
KEY_RE = rf"(dg({GUIDANCE_RE})-)?{SAMPLER_RE}"
MODEL_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"

_PARSE = re.compile(rf"^(?:dg(?P<guidance>{GUIDANCE_RE})-)?(?P<solver>{SOLVER_RE})-n(?P<num_steps>\d+)"
                    rf"-rho(?P<rho>{NUMBER})(?:-churn(?P<S_churn>{NUMBER}))?$")


def fmt(x: float) -> str:
    """Numbers in keys: 7 -> '7', 0.5 -> '0.5'."""
    return f"{float(x):g}"


def sampler_key(solver: str = "heun", num_steps: int = 18, rho: float = 7, S_churn: float = 0,
                guidance: str | None = None) -> str:
    """`heun-n18-rho7`, with `-churn<S>` when S_churn > 0 and `dg<guidance>-` in front when guided."""
    key = f"{solver}-n{int(num_steps)}-rho{fmt(rho)}"
    if S_churn and float(S_churn) > 0:
        key += f"-churn{fmt(S_churn)}"
    if guidance:
        key = f"dg{guidance}-{key}"
    return key


def parse_key(key: str) -> dict:
    """The settings a key names: solver, num_steps, rho, S_churn, guidance (None when unguided)."""
    m = _PARSE.match(key)
    if not m:
        raise UserError(f"{key!r} is not a sample-set key like heun-n18-rho7")
    return {"solver": m["solver"], "num_steps": int(m["num_steps"]), "rho": float(m["rho"]),
            "S_churn": float(m["S_churn"] or 0), "guidance": m["guidance"]}


def nfe(num_steps: int, solver: str = "heun") -> int:
    """Network evaluations per image: Heun 2N - 1 (no correction on the last step), Euler N."""
    if solver == "heun":
        return 2 * int(num_steps) - 1
    if solver == "euler":
        return int(num_steps)
    raise ValueError(f"unknown solver {solver!r} (choose from {', '.join(SOLVERS)})")


def steps_for_nfe(nfe_: int, solver: str = "heun") -> int:
    """The step count that spends `nfe_` network evaluations per image."""
    return (int(nfe_) + 1) // 2 if solver == "heun" else int(nfe_)


# ------------------------------------------------------------------------------------------------
# Seed ranges

_RANGE_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def seed_range(rep: int, num_images: int, offset: int = 0) -> str:
    """Seeds of repeat `rep` of `num_images` images, from `offset`: '0-49999' for rep 0 of 50k."""
    lo = int(offset) + int(rep) * int(num_images)
    return f"{lo}-{lo + int(num_images) - 1}"


def parse_int_list(s: str | list | range, what: str = "seeds") -> list[int]:
    """Parse '0-49999', '1,2,5-10' or a list into a list of ints (EDM's `parse_int_list`)."""
    if isinstance(s, (list, tuple, range)):
        return [int(x) for x in s]
    out: list[int] = []
    for part in str(s).split(","):
        part = part.strip()
        if not part:
            continue
        m = _RANGE_RE.match(part)
        try:
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise UserError(f"{what}: range {part!r} ends before it starts")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UserError(f"{what}: {part!r} is not an integer or a range like 0-49999") from None
    if not out:
        raise UserError(f"{what}: {s!r} names no values")
    return out
