"""The bench scripts in their --smoke modes (synthetic data, tiny models): the code paths
the long runs take, end to end, and the number-provenance check of the docs."""

import json
import math
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, THREADS

sys.path.insert(0, str(ROOT / "bench"))

import check_numbers  # noqa: E402
import convergence  # noqa: E402


def test_paper_regime_smoke_writes_paired_results(tmp_path):
    assert convergence.main(["--regime", "paper", "--smoke", "--jobs", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["regime"] == "paper" and res["command"].startswith("python bench/convergence.py")
    assert "commit" in res and "machine" in res
    s = res["studies"]["fmnist-convnet-s-paper"]
    # every method of the paper's regime, Eq. 41's absolute beta chosen from a grid of measured energies
    assert set(s["methods"]) == set(convergence.PAPER_METHODS) | {"b-alt-energy-abs"}
    beta = s["beta_search"]
    assert beta["beta"] in beta["profile"]["grid"] and beta["spec"] == f"b-alt-energy[beta={beta['beta']:g}]"
    assert s["specs"]["b-alt-energy-abs"] == beta["spec"]
    # the regime's schedule: step decay, plateau re-estimation settings, smoothed and seed-paired targets
    assert s["schedule"] == "step" and s["milestones"] == [2] and s["paired"] and s["smooth_k"] == convergence.SMOOTH_K
    names = [sp["name"] for sp in s["target_specs"]]
    assert names[:2] == ["sgd_best_train_loss", "sgd_best-0.2"] and len(names) == 4
    sgd = s["methods"]["sgd"]
    for name in names:  # SGD reaches its own per-seed targets, at ratio 1
        t = sgd["to_target"][name]
        if t["reached"]:
            assert t["iter_ratio_to_sgd"]["mean"] == pytest.approx(1.0)
    # per-seed values: the free-mode training loss in every trace point, MaskT of every final model
    run = s["runs"]["i-alt-stored"]["0"]
    assert all("train_loss" in p for p in run["trace"])
    assert 0.0 <= run["maskt_acc"] <= 1.0 and run["free_acc"] == pytest.approx(run["test_acc"])
    assert s["methods"]["i-alt-stored"]["per_seed"]["0"]["reestimated_at_epoch"] == [1, 2]
    assert (tmp_path / "fmnist-convnet-s-paper" / "trace.png").is_file()
    # --collect summarises the same runs without training anything
    assert convergence.main(["--regime", "paper", "--smoke", "--jobs", "1", "--out", str(tmp_path), "--collect"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["studies"]["fmnist-convnet-s-paper"]
    assert again["runs"]["sgd"]["0"]["trace"] == s["runs"]["sgd"]["0"]["trace"]


def test_hardthreshold_smoke_has_bias_free_tau_variants(tmp_path):
    assert convergence.main(["--regime", "hardthreshold", "--smoke", "--jobs", "1", "--out", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "results.json").read_text())["studies"]["fmnist-convnet-s-hardthreshold"]
    taus = {f"sgd-nobias-tau{t:g}" for t in convergence.HT_TAUS}
    assert set(s["methods"]) == {"sgd", "sgd-nobias"} | taus
    assert s["method_overrides"]["sgd"] == [] and all(
        s["method_overrides"][m] == ["model.kwargs={bias: false}"] for m in taus | {"sgd-nobias"}
    )
    import yaml

    cfg = yaml.safe_load(
        (tmp_path / "fmnist-convnet-s-hardthreshold" / "seed0" / "sgd-nobias-tau0.1" / "config.yaml").read_text()
    )
    assert (
        cfg["model"]["kwargs"] == {"bias": False} and cfg["support"]["tau"] == 0.1 and cfg["support"]["method"] == "sgd"
    )


def test_gpu_script_parses_and_runs_its_cpu_smoke(tmp_path):
    script = ROOT / "bench" / "paper_regime_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "HOME": str(tmp_path), "OMP_NUM_THREADS": str(THREADS)}
    p = subprocess.run(
        ["bash", str(script), "--cpu-smoke", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((tmp_path / "smoke-results.json").read_text())
    s = res["studies"]["fmnist-allcnn-c-paper-gpu"]
    assert s["model"] == "allcnn-c" and s["pad"] == 2 and s["epochs"] == 2
    assert not any(m["diverged"] or m["unfinished"] for m in s["methods"].values())


def test_dsd_table_smoke_matches_sparsity(tmp_path):
    import dsd_table

    assert dsd_table.main(["--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "dsd-equal-sparsity.json").read_text())
    rows = res["per_seed"]["0"]["rows"]
    ref = rows["DSD, support-b"]["pruned_counts"]
    # magnitude pruning removes as many weights as support pruning in every tensor; channel-L2 as many units
    assert rows["DSD, magnitude at support-b's sparsity"]["pruned_counts"]["weights"] == ref["weights"]
    assert rows["DSD, channel-L2 at support-b's sparsity"]["pruned_counts"]["units"] == ref["units"]
    assert rows["dense + E_s + E_r epochs, no pruning"]["weights_pruned"] == 0
    assert set(res["paired"]) == {
        "DSD, support-b vs DSD, magnitude at support-b's sparsity",
        "DSD, support-b vs DSD, channel-L2 at support-b's sparsity",
    }


def test_theorem1_h1_smoke(tmp_path):
    import theorem1_h1

    assert theorem1_h1.main(["--smoke", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "theorem1-h1.json").read_text())
    assert res["h"] == 1 and [r["problem"]["n"] for r in res["results"]] == [10, 40, 400]
    for r in res["results"]:
        full = r["theorem1"]["full"]
        assert full["columns"] == res["d"] * res["o"]  # h = 1: no zero columns, every column identifiable
        assert full["lambda_min_sq_over_m"] <= full["lambda_max_sq_over_m"]
    assert "| 400 |" in (tmp_path / "theorem1-h1.md").read_text()


# ----------------------------------------------------------------------------- number provenance


def test_every_number_under_a_results_heading_is_backed():
    problems, blocks = check_numbers.check(check_numbers.doc_files())
    assert not problems, "\n".join(problems[:30])
    assert any(b.kind == "source" and b.numbers for b in blocks)  # something is checked against files


def _doc(tmp_path, text, data=None):
    res = tmp_path / "bench" / "results"
    res.mkdir(parents=True)
    (res / "r.json").write_text(json.dumps(data or {"acc": 0.9048, "it": 1415.2, "ratio": {"0.1": 1.07}}))
    md = tmp_path / "doc.md"
    md.write_text(text)
    return md


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    monkeypatch.setattr(check_numbers, "ROOT", tmp_path)
    return tmp_path


def test_check_numbers_accepts_backed_rounded_and_percent_values(fake_root):
    md = _doc(
        fake_root, "# Results\n\n*Source: bench/results/r.json*\n\nacc 90.48%, 1,415 steps, 1.07x at β 0.1, Eq. 41\n"
    )
    problems, _ = check_numbers.check([md])
    assert problems == []


def test_check_numbers_flags_unbacked_and_unlabelled_numbers(fake_root):
    md = _doc(fake_root, "# Results\n\n91.5% here\n\n*Source: bench/results/r.json*\n\nacc 90.47%\n")
    problems, _ = check_numbers.check([md])
    assert len(problems) == 2
    assert "91.5 has no label" in problems[0] and "90.47 is not a value of bench/results/r.json" in problems[1]


def test_check_numbers_exempts_code_history_and_other_sections(fake_root):
    md = _doc(
        fake_root,
        "# Setup\n\n77.7 is not under a results heading\n\n## Results, old\n\n*Not yet re-run: earlier session*\n\n"
        "| a | 12.34 |\n\n### more\n\n`--epochs 99` and a fence:\n\n```\npython x.py --lr 0.123\n```\n",
    )
    problems, blocks = check_numbers.check([md])
    assert problems == [] and [b.kind for b in blocks] == ["none", "history", "none"]


def test_check_numbers_pending_source_allows_placeholders_until_the_file_exists(fake_root):
    md = _doc(fake_root, "# Results\n\n*Source: pending bench/results/later.json*\n\nratio ⟪b-alt ratio to 0.2⟫\n")
    assert check_numbers.check([md])[0] == []
    (fake_root / "bench" / "results" / "later.json").write_text("{}")
    problems, _ = check_numbers.check([md])
    assert len(problems) == 1 and "exists now" in problems[0]


def test_check_numbers_cli_exit_code(tmp_path):
    md = tmp_path / "d.md"
    md.write_text("# Results\n\n3.14159 unlabelled\n")
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "check_numbers.py"), str(md)], capture_output=True, text=True
    )
    assert p.returncode == 1 and "3.14159 has no label" in p.stdout
    assert shutil.which("bash")


def test_preactivations_prints_one_row_per_threshold_layer(capsys):
    import preactivations

    assert preactivations.main(["--data", "synthetic", "--n", "64"]) == 0
    out = capsys.readouterr().out
    assert out.count("| features.") == 3 and "| classifier.3 |" in out


def test_overhead_bench_runs_every_figure_with_repeated_fits(tmp_path):
    """bench/overhead.py end to end on a tiny synthetic set, with two fit() runs for the tax (the
    second into the first one's folder), writing its JSON with the command and the commit."""
    cmd = [sys.executable, "bench/overhead.py", "--data", "synthetic", "--subset", "256", "--steps", "1"]
    cmd += ["--repeats", "2", "--tax-repeats", "2", "--no-memory", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "overhead.json").read_text())
    assert res["command"].startswith("python bench/overhead.py --data synthetic") and res["repeats"] == 2
    for key in ("b_alt_step_over_sgd", "i_alt_stored_step_over_sgd", "estimation_pass_over_epoch"):
        assert 0 < res[key] < 100, (key, res[key])
    assert math.isfinite(res["framework_tax"]) and res["maskstore_bits_per_activation"] < 1.01
    assert "| B-alt step / SGD step |" in p.stdout and 0 <= res["other_processes_cpu_share"] <= 1


@pytest.mark.parametrize("args", [["--tax-repeats", "0"], ["--repeats", "-1"], ["--out", "/proc/x"]])
def test_overhead_bench_refuses_bad_options_before_measuring(args):
    cmd = [sys.executable, "bench/overhead.py", *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("overhead.py: error: --")


def test_gpu_check_smoke_runs_every_step_and_writes_their_json(tmp_path):
    """bench/gpu_check.sh, the one script prepared for a lent GPU, in its CPU smoke mode: the steps
    run (tiny sizes), each writes its JSON into --out, and a wrong option is one line, exit 2."""
    script = ROOT / "bench" / "gpu_check.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path), "SUPPORTNET_KERNELS": "0",
           "OMP_NUM_THREADS": str(THREADS)}  # fmt: skip
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--bogus" in bad.stderr
    out = tmp_path / "gpu"
    p = subprocess.run(
        ["bash", str(script), "--smoke", "--no-baseline", "--data", "synthetic", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "0 step(s) failed" in (out / "gpu_check.log").read_text()
    rows = json.loads((out / "gpu_throughput.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["allcnn-c", "resnet18"] and not any("error" in r for r in rows)
    assert not any(r["bf16"] for r in rows), "bf16 on the CPU: a reference path ~10x slower than fp32"
    for r in rows:  # every method timed and profiled
        assert set(r["images_per_s"]) == set(r["profile_top_kernels_ms_per_step"]) and r["images_per_s"]["sgd"] > 0
        assert all(r["profile_top_kernels_ms_per_step"].values())
    overhead = json.loads((out / "overhead.json").read_text())
    assert overhead and json.loads((out / "env.json").read_text())["device"] == "cpu"


@pytest.mark.parametrize(
    "args",
    [
        ["teardown_aborts.py", "--runs", "0"],
        ["gpu_graphs.py", "--models", "nope"],
        ["gpu_throughput.py", "--quick", "--out", "/proc/no-such-folder"],
        ["overhead.py", "--out", "/proc/no-such-folder"],
    ],
)
def test_bench_scripts_refuse_bad_arguments_in_one_line(args):
    """Before any measuring: one line naming the option, exit 2."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / args[0]), *args[1:]], capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(f"{args[0]}: error: --")
    assert args[1] in p.stderr.strip().splitlines()[-1] or args[-1] in p.stderr
