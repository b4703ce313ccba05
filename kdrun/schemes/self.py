"""Self-distillation across generations: born-again networks (Furlanello, Lipton, Tschannen, Itti &
Anandkumar, "Born-Again Neural Networks", ICML 2018). Generation 0 of the student architecture
learns from the labels; generation k learns from generation k-1, frozen, with the configured KD
method(s). The ensemble of all generations (their averaged probabilities) is reported too, as in
the paper."""
from __future__ import annotations

from kdrun import KdrunError
from kdrun.checkpoint import load_weights
from kdrun.methods import build_methods
from kdrun.models import build_from_config, model_meta
from kdrun.schemes import RunContext, teacher_not_used
from kdrun.schemes.offline import check_layers, distill
from kdrun.teachers import Ensemble, test_report


def run(ctx: RunContext) -> dict:
    cfg, data, device = ctx.cfg, ctx.data, ctx.device
    if not cfg.kd:
        raise KdrunError("scheme=self distils each generation from the previous one: choose a KD method "
                         "(kd=hinton, or any other), not kd=none")
    teacher_not_used(cfg, "teaches each generation of the student with the previous one")
    def load(name: str):
        """A finished generation, from its best-on-validation checkpoint."""
        model = build_from_config(cfg.student, data)
        load_weights(model, ctx.run_dir / "checkpoints" / f"{name}_best.pt", name, **model_meta(cfg.student, data))
        return model.to(device)

    if not cfg.dry_run:  # generation 1's layers, checked before generation 0 trains
        check_layers(cfg, build_methods(cfg.kd, cfg.student, cfg.student), cfg.student, data, device)
    out = distill(ctx, {}, None, None, role="gen0")
    if cfg.dry_run:  # shows the layers generation 1 would read from generation 0
        previous = build_from_config(cfg.student, data).to(device)
        return distill(ctx, build_methods(cfg.kd, cfg.student, cfg.student), previous, None, role="gen1")
    generations, members = {"gen0": out["student"]}, {"gen0": load("gen0")}
    for k in range(1, cfg.scheme.generations + 1):
        name, previous = f"gen{k}", f"gen{k - 1}"
        # Fresh methods (and adapters) each generation; the teacher's layers are the student's own.
        methods = build_methods(cfg.kd, cfg.student, cfg.student)
        teacher_info = {**generations[previous], "source": previous}
        generations[name] = distill(ctx, methods, members[previous], teacher_info, role=name)["student"]
        members[name] = load(name)
    ensemble = Ensemble(members, "mean_probs", T=1.0)
    last = f"gen{cfg.scheme.generations}"
    return {"teacher": {**generations["gen0"], "source": "gen0"}, "student": generations[last],
            "models": generations,
            "ensemble": {"arch": f"ensemble of gen0..{last}", **test_report(ensemble, data, device)},
            "modules": {**members, "teacher": members["gen0"], "student": members[last], "ensemble": ensemble}}
