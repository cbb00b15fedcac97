"""setup.sh's llama.cpp build helper: which CPU variants it keeps, and when it rebuilds."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_llama_cpp.py"
spec = importlib.util.spec_from_file_location("build_llama_cpp", SCRIPT)
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

# The shape of ggml/src/CMakeLists.txt's variant list in llama-cpp-python 0.3.36.
LISTING = """\
function(ggml_add_cpu_backend_variant tag_name)
    set(GGML_CPU_TAG_NAME ${tag_name})
endfunction()
if (GGML_CPU_ALL_VARIANTS)
    if (GGML_SYSTEM_ARCH STREQUAL "x86")
        ggml_add_cpu_backend_variant(x64)
        ggml_add_cpu_backend_variant(sse42              SSE42)
        ggml_add_cpu_backend_variant(haswell            SSE42 AVX F16C FMA AVX2 BMI2)
        ggml_add_cpu_backend_variant(skylakex           SSE42 AVX F16C FMA AVX2 BMI2 AVX512)
        if (NOT MSVC)
            ggml_add_cpu_backend_variant(zen4           SSE42 AVX F16C FMA AVX2 BMI2 AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16)
        endif()
        ggml_add_cpu_backend_variant(icelake            SSE42 AVX F16C FMA AVX2 BMI2 AVX512 AVX512_VBMI AVX512_VNNI)
    elseif(GGML_SYSTEM_ARCH STREQUAL "ARM")
            ggml_add_cpu_backend_variant(armv8.0_1)
    endif()
endif()
"""


def active_variants(text: str) -> list[str]:
    return [m.group(2) for line in text.splitlines() if (m := build.VARIANT_LINE.match(line))]


def test_only_the_chosen_x86_variants_stay_in_the_build():
    text, kept = build.keep_variants(LISTING, ["x64", "haswell", "icelake"])
    assert kept == ["x64", "haswell", "icelake"]
    assert active_variants(text) == ["x64", "haswell", "icelake", "armv8"]  # other architectures are left alone
    assert "function(ggml_add_cpu_backend_variant tag_name)" in text  # the definition is not a variant line
    assert text.count("\n") == LISTING.count("\n")  # lines are commented out, never removed


def test_a_variant_the_listing_lacks_is_reported_missing():
    _, kept = build.keep_variants(LISTING, ["x64", "sapphirerapids"])
    assert kept == ["x64"]


def test_the_cached_wheel_is_rebuilt_when_the_flags_or_variants_change():
    key = build.build_key("0.3.36", ["x64", "haswell"], "-DGGML_NATIVE=OFF")
    assert key == build.build_key("0.3.36", ["haswell", "x64"], "-DGGML_NATIVE=OFF")  # order does not matter
    assert key != build.build_key("0.3.36", ["x64", "haswell"], "-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF")
    assert key != build.build_key("0.3.36", ["x64", "haswell", "icelake"], "-DGGML_NATIVE=OFF")
    assert key != build.build_key("0.3.37", ["x64", "haswell"], "-DGGML_NATIVE=OFF")


def test_an_install_is_kept_only_while_its_build_key_matches(tmp_path):
    stamp = build.install_stamp(str(tmp_path))
    key = build.build_key("0.3.36", ["x64", "haswell"], "")
    assert not build.installed_matches(stamp, key)  # nothing recorded yet: build or reinstall
    stamp.write_text(key + "\n")
    assert build.installed_matches(stamp, key)  # llama_cpp is importable in the test environment
    assert not build.installed_matches(stamp, build.build_key("0.3.36", ["x64", "haswell", "icelake"], ""))
