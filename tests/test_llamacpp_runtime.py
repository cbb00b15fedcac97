"""llama.cpp's CPU code is chosen by what really runs here, not only by what the CPU advertises."""

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from compress import llamacpp_runtime as rt  # noqa: E402


def test_every_variant_we_may_probe_names_linux_cpu_flags():
    # A misspelt flag (avx512_vbmi for avx512vbmi) would silently skip the best variants.
    known = {"avx512f", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "avx2", "fma", "f16c",
             "bmi2", "avx_vnni", "avx", "sse4_2"}
    assert {flag for _, needs in rt.VARIANTS for flag in needs} <= known


def test_a_variant_that_cannot_load_is_reported_not_fatal(tmp_path):
    bogus = tmp_path / "libggml-cpu-bogus.so"
    bogus.write_bytes(b"not a shared library")
    works, why = rt.probe_variant(bogus)
    assert not works and "could not load" in why


@pytest.mark.integration
def test_the_chosen_variant_runs_the_builtin_model_in_this_process():
    if not rt.variant_files():
        pytest.skip("llama-cpp-python was built without CPU variants")
    name = rt.ensure_cpu_backend()
    assert name in rt.variant_files()
    assert set(dict(rt.VARIANTS)[name]) <= rt.cpu_flags()
    from compress.models import DEFAULT_MODEL, builtin_gguf_path

    model = llama_cpp.Llama(str(builtin_gguf_path(DEFAULT_MODEL)), n_ctx=64, n_threads=1, verbose=False)
    try:
        model.eval(model.tokenize(b"The capital of France is", add_bos=False))
    finally:
        model.close()


@pytest.mark.integration
def test_reports_name_the_variant_that_was_chosen_without_loading_it_again():
    if not rt.variant_files():
        pytest.skip("llama-cpp-python was built without CPU variants")
    assert rt.probed_variant() == rt.ensure_cpu_backend()  # the probe's verdicts are cached, so they agree
