"""Convention inference on every selected backend, one test per backend: `test_inference[my_bn-cpu-float64]`.

Each inferred property (channel axis, momentum style, running-variance estimator, eps placement and value, ...)
agrees with the backend's declared convention record, or a known discrepancy (bnconf's, or the project's own
from --bnconf-records) covers a probe that decided it. A property that DIFFERS unexplained fails, naming the
property, and its deciding probe is saved with its replay line.
"""

import pytest

from bnconf.testing import support


def probe_dtype(backend, dtypes) -> tuple[str | None, list[str]]:
    """(the dtype the probes run in, the half dtypes whose accumulation is probed), as `bnconf report` chooses
    them (`inference.probe_dtypes`); without a selection, infer's default dtype (float64, else float32, else
    the first) and every half dtype the backend declares."""
    from bnconf.conformance.inference import probe_dtypes

    if not dtypes:
        default = next((d for d in ("float64", "float32") if d in backend.dtypes), backend.dtypes[0])
        return default, probe_dtypes(backend, None)[1]
    return probe_dtypes(backend, dtypes)


def pytest_generate_tests(metafunc):
    if metafunc.definition.name == "test_inference":
        s = support.selected(metafunc.config)
        params = []
        for b in s.backends:
            device = s.first_device(b)
            dtype, _ = probe_dtype(b, s.dtypes)
            if device is None or dtype is None:
                continue
            params.append(pytest.param(b, device, dtype, id=f"{b.name}-{device}-{dtype}",
                                       marks=[pytest.mark.gpu] if device in ("cuda", "gpu") else []))
        metafunc.parametrize("backend, device, dtype", params)


def test_inference(backend, device, dtype, request):
    from bnconf.conformance.ideal import inputs_of
    from bnconf.conformance.inference import deciding_probe, infer

    support.skip_unless_runs(backend, device)
    _, halves = probe_dtype(backend, support.selected(request.config).dtypes)
    inference = infer(backend, device, dtype, half_dtypes=halves)
    verdicts = inference.verdicts(backend.convention, registry=support.discrepancies_for(backend))
    differs = [prop for prop, v in verdicts.items() if v == "DIFFERS"]
    if not differs:
        return
    lines = [f"{backend.name} {device} {inference.dtype}: {', '.join(differs)} DIFFERS from the declared "
             f"{backend.convention.name}, unexplained"]
    for prop in differs:
        finding = inference.findings[prop]
        lines.append(f"  {finding}")
        probe = deciding_probe(backend, finding)
        if probe is not None:
            mode, r = probe
            lines.append(f"  replay ({prop}'s deciding probe): " + support.replay(backend, mode, inputs_of(r), r.dtype, r.device))
    pytest.fail("\n".join(lines), pytrace=False)
