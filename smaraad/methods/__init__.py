"""The methods registry: a plain dict from name to MethodSpec.

Adding a method: write one module with a params dataclass and a loss returning named terms, then
add one line here. Every registered method is exercised by tests/test_methods.py for free.
"""

from __future__ import annotations

from smaraad.methods.base import Context, MethodSpec, batch_mean
from smaraad.methods.pgd_at import PGDATParams, pgd_at_loss
from smaraad.methods.smaraad import (SmaraADParams, SmaraADPPParams, smaraad_loss,
                                     smaraad_pp_loss)

METHODS: dict[str, MethodSpec] = {
    "smaraad": MethodSpec(SmaraADParams, smaraad_loss, doc="SmaraAD, Eq. 8-9"),
    "smaraad_pp": MethodSpec(SmaraADPPParams, smaraad_pp_loss, doc="SmaraAD++, Eq. 8-10"),
    # The ablation of Figure 4: Eq. 8's attack, four outer losses.
    "kd": MethodSpec(SmaraADParams, smaraad_loss, defaults={"outer": "kl", "align": False},
                     doc="ablation: KL outer loss, no alignment"),
    "kd_align": MethodSpec(SmaraADParams, smaraad_loss, defaults={"outer": "kl"},
                           doc="ablation: KL + L_align"),
    "sm": MethodSpec(SmaraADParams, smaraad_loss, defaults={"align": False},
                     doc="ablation: L_sm only"),
    "sm_align": MethodSpec(SmaraADParams, smaraad_loss, doc="ablation: L_sm + L_align (= SmaraAD)"),
    "pgd_at": MethodSpec(PGDATParams, pgd_at_loss, needs_teacher=False,
                         doc="PGD-AT (Madry et al., 2018); trains teachers"),
}

ABLATION_VARIANTS = ("kd", "kd_align", "sm", "sm_align")

__all__ = ["METHODS", "ABLATION_VARIANTS", "MethodSpec", "Context", "batch_mean"]
