"""Template bombs (PromptSource Jinja, FLAN patterns) are refused within their limits, naming the
template and the record; ordinary templates render as before."""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from optiml_engine.data.bench import build_bench
from optiml_engine.data.bench_config import load_bench_config
from optiml_engine.data.sources import TemplateLimits, load_tasks
from optiml_engine.data.sources.sandbox import render_jinja, render_pattern
from optiml_engine.data.sources.template_limits import TemplateLimitExceeded, TemplateRefused

ROOT = Path(__file__).parents[2]
SMALL = TemplateLimits(max_seconds=0.2, max_chars=10_000)
X = "abcdefghij" * 50  # a 500-character record field
MAX_CHARS_FIX = "raise templates.max_chars in the bench config, or fix the template"


def timed(fn, *args):
    """(exception or result, CPU seconds, wall seconds) of one render."""
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        out = fn(*args)
    except TemplateRefused as err:
        out = err
    return out, time.process_time() - cpu, time.perf_counter() - wall


@pytest.mark.parametrize("template, message", [
    ("{{ (9**(9**8)) > 0 }}", "9 ** 43046721 has about 136454877 bits, above the 65536 allowed"),
    ("{{ 'x' * 1000000000 }}",
     "a repeat str * 1000000000 would hold 1000000000 characters, above the 10000 allowed"),
    ("{{ [x] * 100 }}", "a repeat list * 100 would hold 50100 characters, above the 10000 allowed"),
    ("{{ x|center(1000000000) }}",
     "the width of filter center: 1000000000 is above the 10000 characters allowed"),
    ("{{ x.ljust(999999999) }}",
     "an argument of str.ljust: 999999999 is above the 10000 characters allowed"),
    ("{{ '%999999999s' % x }}", "format width 999999999 is above the 10000 characters allowed"),
    ("{{ '%(x)999999999s' % {'x': x} }}",
     "format width 999999999 is above the 10000 characters allowed"),
    ("{{ '%*s' % (999999999, x) }}",
     "format width 999999999 is above the 10000 characters allowed"),
    ("{{ '%999999999s'|format(x) }}",
     "format width 999999999 is above the 10000 characters allowed"),
    ("{{ '{:>999999999}'.format(x) }}",
     "pattern field {:>999999999} asks for width 999999999, above the 10000 characters allowed"),
    ("{{ x|indent(999999999) }}",
     "the width of filter indent: 999999999 is above the 10000 characters allowed"),
    ("{{ x|replace('', 'yyyyyyyyyy')|replace('', 'yyyyyyyyyy') }}",  # 500 -> 5510 -> 60620
     "filter replace would hold 60620 characters, above the 10000 allowed"),
    ("{% set a = x %}" + "{% set a = a ~ a %}" * 8 + "{{ a }}",
     "a block's output would hold 16000 characters, above the 10000 allowed"),
    ("{% set a = x %}" + "{% set a = a + a %}" * 8 + "{{ a }}",
     "a concatenation would hold 16000 characters, above the 10000 allowed"),
    ("{% set b %}{% for c in x %}{{ x }}{% endfor %}{% endset %}{{ b|length }}",
     "a block's output would hold 10500 characters, above the 10000 allowed"),
    ("{% for c in x %}{{ x }}{% endfor %}", "output would exceed 10000 characters"),
    ("{{ (2).to_bytes(1000000000, 'big')|length }}",
     "an argument of int.to_bytes: 1000000000 is above the 10000 characters allowed"),
    ("{{ x|batch(1000000000, 'z')|list|length }}",
     "the linecount of filter batch: 1000000000 is above the 10000 characters allowed"),
])
def test_jinja_size_bombs_are_refused_before_they_run(template, message):
    err, cpu, _ = timed(render_jinja, template, {"x": X}, SMALL)
    assert isinstance(err, TemplateLimitExceeded), err
    assert str(err) == message
    assert err.fix in (MAX_CHARS_FIX, "fix the template; integers are limited to 65536 bits")
    assert cpu < 0.1  # refused by a check, long before the 0.2 s budget


def test_jinja_time_bomb_is_stopped_by_the_cpu_budget():
    loops = "{% for a in x %}{% for b in x %}{% for c in x %}{% endfor %}{% endfor %}{% endfor %}"
    err, cpu, _ = timed(render_jinja, loops, {"x": X}, SMALL)  # 1.25e8 iterations otherwise
    assert isinstance(err, TemplateLimitExceeded)
    assert str(err) == "rendering took more than 0.2 s of CPU time"
    assert err.fix == "raise templates.max_seconds in the bench config, or fix the template"
    assert 0.15 < cpu < 0.5  # stopped by the 0.2 s budget (timer granularity: a tick early)


def test_the_timer_is_disarmed_and_the_handler_restored():
    before = signal.getsignal(signal.SIGVTALRM)
    assert render_jinja("{{ x|upper }}", {"x": "ok"}, SMALL) == "OK"
    assert signal.getsignal(signal.SIGVTALRM) is before
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)


def test_outside_the_main_thread_the_budget_is_checked_at_each_output():
    result = {}

    def work():
        result["out"] = timed(render_jinja, "{% for a in x %}{% for b in x %}{{ a ~ b }}"
                              "{% endfor %}{% endfor %}", {"x": X * 20},
                              TemplateLimits(max_seconds=0.2, max_chars=10**9))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    err, cpu, _ = result["out"]
    assert str(err) == "rendering took more than 0.2 s of CPU time" and cpu < 0.5


def test_recursion_and_float_overflow_are_refused_not_raised():
    err = timed(render_jinja, "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}, SMALL)[0]
    assert str(err) == "template recurses too deeply"
    err = timed(render_jinja, "{{ 2.0 ** 100000 }}", {}, SMALL)[0]
    assert str(err) == ("template failed to render: OverflowError: (34, 'Numerical result out "
                        "of range')")


def test_ordinary_templates_still_render():
    template = ("{{ 'Q: ' ~ x[:5] }} {{ 2 ** 10 }} {{ x|upper|truncate(9) }} "
                "{{ choices|join(', ') }} {{ '%-6s|' % 'ab' }} {{ '{:>4}'.format(7) }}")
    assert render_jinja(template, {"x": X, "choices": ["yes", "no"]}, SMALL) == (
        "Q: abcde 1024 ABCDEF... yes, no ab    |    7")


@pytest.mark.parametrize("pattern, message", [
    ("{text:>999999999}",
     "pattern field {text:>999999999} asks for width 999999999, above the 10000 characters "
     "allowed"),
    ("{text:.999999999}",
     "pattern field {text:.999999999} asks for width 999999999, above the 10000 characters "
     "allowed"),
    ("{text:{w}}", "pattern field {text:{w}} takes its format from a field; write the width as "
     "a number"),
])
def test_flan_width_bombs_are_refused(pattern, message):
    err, cpu, _ = timed(render_pattern, pattern, {"text": "abc", "w": 10**9}, SMALL)
    assert isinstance(err, TemplateRefused) and str(err) == message and cpu < 0.1


# --------------------------------------------------------------------------------------------
# Through the task readers and the bench config: the template and the record named


def promptsource_dir(root: Path, jinja: str, rows: list[dict]) -> Path:
    d = root / "bombs"
    d.mkdir(parents=True)
    (d / "templates.yaml").write_text(yaml.safe_dump({"dataset": "bombs", "templates": {
        "t1": {"id": "t1", "name": "bomb", "jinja": jinja, "answer_choices": None}}}))
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_promptsource_bomb_names_template_and_record(tmp_path):
    d = promptsource_dir(tmp_path, "{{ text }} ||| {{ (9**(9**8)) > 0 }}",
                         [{"text": "fine"}, {"text": "also fine"}])
    start = time.process_time()
    with pytest.raises(Exception) as err:
        load_tasks(d, "promptsource", limits=SMALL)
    assert time.process_time() - start < 0.5
    assert str(err.value) == (
        f"{d / 'templates.yaml'}: template t1: record {d / 'train.jsonl'}:1: 9 ** 43046721 has "
        "about 136454877 bits, above the 65536 allowed (fix the template; integers are limited "
        "to 65536 bits)")


def test_promptsource_output_limit_names_the_record(tmp_path):
    d = promptsource_dir(tmp_path, "{{ text }} ||| ok", [{"text": "short"}, {"text": "y" * 20_000}])
    with pytest.raises(Exception) as err:
        load_tasks(d, "promptsource", limits=SMALL)
    assert str(err.value) == (
        f"{d / 'templates.yaml'}: template t1: record {d / 'train.jsonl'}:2: output would exceed "
        f"10000 characters ({MAX_CHARS_FIX})")
    assert len(load_tasks(d, "promptsource")[0].instances) == 2  # the default limit: 1M chars


def flan_dir(root: Path, pattern: str, rows: list[dict]) -> Path:
    d = root / "flan"
    d.mkdir()
    (d / "templates.json").write_text(json.dumps({"rte": [["{premise}", "{answer}"],
                                                          [pattern, "{answer}"]]}))
    (d / "rte.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_flan_width_bomb_names_the_template_before_any_record(tmp_path):
    d = flan_dir(tmp_path, "{premise:>999999999}", [{"premise": "p", "answer": "a"}])
    with pytest.raises(Exception) as err:
        load_tasks(d, "flan")
    assert str(err.value) == (
        f"{d / 'templates.json'}: rte[1]: pattern field {{premise:>999999999}} asks for width "
        "999999999, above the 1000000 characters allowed (raise templates.max_chars in the "
        "bench config, or fix the template)")


def test_flan_output_limit_names_the_record(tmp_path):
    d = flan_dir(tmp_path, "{premise}", [{"premise": "p", "answer": "a"},
                                         {"premise": "p" * 20_000, "answer": "a"}])
    with pytest.raises(Exception) as err:
        load_tasks(d, "flan", limits=SMALL)
    assert str(err.value) == (
        f"{d / 'templates.json'}: rte: record {d / 'rte.jsonl'}:2: output of 20000 characters, "
        "above the 10000 allowed (pattern '{premise}' -> '{answer}') "
        f"({MAX_CHARS_FIX})")


def bench_yaml(tmp_path: Path, templates: dict | None) -> Path:
    cfg = {"name": "b", "tokenizer": "byte", "on_unmapped": "skip",
           "sources": [{"name": "promptsource", "format": "promptsource", "path": "bombs"}]}
    if templates is not None:
        cfg["templates"] = templates
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_config_templates_section(tmp_path):
    assert load_bench_config(bench_yaml(tmp_path, None)).templates == TemplateLimits(1.0, 1_000_000)
    cfg = load_bench_config(bench_yaml(tmp_path, {"max_seconds": 0.5, "max_chars": 100}))
    assert cfg.templates == TemplateLimits(0.5, 100)
    for bad, message in [({"max_sconds": 1}, "templates: unknown key(s) max_sconds"),
                         ({"max_seconds": 0}, "templates.max_seconds: must be positive"),
                         ({"max_seconds": float("nan")},
                          "templates.max_seconds: nan is not a finite number"),
                         ({"max_chars": "many"}, "templates.max_chars: expected int")]:
        with pytest.raises(Exception, match=re.escape(message)):
            load_bench_config(bench_yaml(tmp_path, bad))


def test_data_build_stops_a_time_bomb_within_the_configured_budget(tmp_path):
    loops = "{% for a in text %}{% for b in text %}{% for c in text %}{% endfor %}{% endfor %}" \
            "{% endfor %}{{ text }} ||| x"
    d = promptsource_dir(tmp_path, loops, [{"text": X}])
    config = bench_yaml(tmp_path, {"max_seconds": 0.1})
    start = time.process_time()
    with pytest.raises(Exception) as err:
        build_bench(config, tmp_path / "out")
    assert time.process_time() - start < 1.0
    assert str(err.value) == (
        f"{d / 'templates.yaml'}: template t1: record {d / 'train.jsonl'}:1: rendering took more "
        "than 0.1 s of CPU time (raise templates.max_seconds in the bench config, or fix the "
        "template)")


def test_cli_data_build_with_a_template_bomb_is_one_line_exit_2(tmp_path):
    d = promptsource_dir(tmp_path, "{{ text }} ||| {{ (9**(9**8)) > 0 }}", [{"text": "a"}])
    config = bench_yaml(tmp_path, None)
    proc = subprocess.run([sys.executable, "-m", "optiml_engine", "data", "build", str(config),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"optiml: error: {d / 'templates.yaml'}: template t1: record {d / 'train.jsonl'}:1: "
        "9 ** 43046721 has about 136454877 bits, above the 65536 allowed (fix the template; "
        "integers are limited to 65536 bits)"]
