"""Every report names the CPU by more than its model name: family, model and instruction-set flags."""

from compress.bench.metrics import cpu_identity, describe_cpu, environment


def test_the_cpu_is_identified_by_vendor_family_model_and_its_isa_flags():
    ident = cpu_identity()
    assert ident["vendor"]
    assert all(flag.startswith(("sse4", "avx", "fma", "f16c", "amx")) for flag in ident["isa"])
    assert ident["isa"] == sorted(ident["isa"])


def test_the_report_line_carries_family_flags_and_llamacpp_code_when_known():
    env = {"cpu_model": "AMD EPYC", "cpu": {"vendor": "AuthenticAMD", "family": "26", "model": "2",
                                            "isa": ["avx2", "avx512f"]}, "llamacpp_cpu_variant": "icelake"}
    assert describe_cpu(env) == ("AMD EPYC (AuthenticAMD family 26 model 2); ISA flags: avx2 avx512f; "
                                 "llama.cpp CPU code: icelake")
    assert describe_cpu({"cpu_model": "older report"}) == "older report"  # reports written before these fields


def test_the_environment_records_them():
    env = environment()
    assert env["cpu"] == cpu_identity() and "llamacpp_cpu_variant" in env
