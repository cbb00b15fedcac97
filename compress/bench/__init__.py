"""`compress bench`: latency, memory, size and quality of every variant, side by side.

Python use::

    from compress.bench import Suite, run_bench
    suite = Suite.from_yaml("configs/bench-default.yaml")
    report = run_bench(suite, "bench-results/run1")

See docs/bench.md for what is measured and how.
"""

from .harness import run_bench
from .schema import validate_report
from .spec import BenchEvaluation, SampleSettings, Settings, Suite, VariantSpec, default_suite_path, parse_variant_arg

__all__ = ["run_bench", "validate_report", "BenchEvaluation", "SampleSettings", "Settings", "Suite", "VariantSpec",
           "default_suite_path", "parse_variant_arg"]
