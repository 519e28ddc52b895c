"""`tprop report` and `tprop plot` on run folders written here (exact numbers, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tprop import paper, plot
from tprop.cli import main
from tprop.report_tables import build_tables, point_labels
from tprop.runs import load_runs

BASE = {
    "dataset": "ptb",
    "hidden": 100,
    "batch_size": 32,
    "lr": 0.1,
    "clip": 0.5,
    "epochs": 10,
    "patience": 3,
    "cell": "gru",
    "layers": 1,
}
ADMM = {
    **BASE,
    "method": "admm",
    "preset": "tprnn",
    "block_size": 20,
    "h_steps": 1,
    "h_lr": 0.001,
    "lam": 0.1,
    "u_lr": 0.1,
}
BPTT = {**BASE, "method": "bptt", "bptt": 20}


def fake_run(
    root: Path,
    name: str,
    config: dict,
    valid: list[float] | None,
    seed: int = 1111,
    finished: bool = True,
    tp: bool = True,
) -> Path:
    """A run folder as `tprop train` leaves it: valid ppl per epoch; train ppl = valid − 20."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, "seed": seed, "out": str(folder)}))
    lines = []
    for i, v in enumerate(valid or [], 1):
        rec = {
            "event": "epoch",
            "epoch": i,
            "train/ppl": v - 20,
            "valid/ppl": v,
            "valid/best_ppl": min(valid[:i]),
        }
        if tp:
            rec.update({"tp/residual": 1.0 / i, "tp/dual_norm": 0.1 * i})
        lines.append(json.dumps(rec))
    (folder / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
    if finished and valid:
        best = min(valid)
        (folder / "summary.json").write_text(
            json.dumps(
                {
                    "best_valid_ppl": best,
                    "best_epoch": valid.index(best) + 1,
                    "final_valid_ppl": valid[-1],
                    "epochs": len(valid),
                    "valid_ppl_history": valid,
                    "stop_reason": "max_epochs",
                    "test_ppl": best - 5,
                }
            )
        )
    elif valid:
        (folder / "checkpoint.pt").write_bytes(b"")
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seed, v in zip((1111, 2222, 3333), (127.0, 128.0, 129.0), strict=True):
        fake_run(root, f"admm_B20_h1_s{seed}", ADMM, [150.0, v, v + 3], seed)
    fake_run(root, "admm_B20_h1_lam1_s1111", {**ADMM, "lam": 1.0}, [160.0, 140.0])
    fake_run(root, "bptt_K20_s1111", BPTT, [160.0, 130.0], tp=False)
    fake_run(root, "bptt_K20_s2222", BPTT, [170.0], 2222, finished=False, tp=False)
    fake_run(root, "admm_B20_h0_s1111", {**ADMM, "h_steps": 0}, [127.5])
    fake_run(root, "admm_B20_h0_lam0_s1111", {**ADMM, "h_steps": 0, "lam": 0.0}, [131.0])
    fake_run(
        root,
        "admm_B10_h2_hid50_s1111",
        {**ADMM, "block_size": 10, "h_steps": 2, "hidden": 50, "epochs": 2},
        [150.0, 140.0],
    )
    (root / "broken_s1111").mkdir()
    (root / "broken_s1111" / "stdout.log").write_text("$ tprop train …\ntprop: error: boom\n")
    (root / "sweep.json").write_text(
        json.dumps(
            {
                "grids": {"mine": {"description": "fake runs", "notes": ""}},
                "runs": {
                    "broken_s1111": {"state": "failed", "returncode": 2, "values": BPTT},
                    "later_s1111": {"state": "pending", "values": BPTT},
                },
            }
        )
    )
    return root


def test_paper_numbers_say_where_they_come_from():
    assert paper.published("table1", "Minibatch PTB", "H-steps = 1", "B = 20").value == 127.43
    assert paper.published("table1", "Batch PTB", "BPTT (K = B)", "B = 5").value == 188.31
    assert paper.published("table1", "Minibatch Text8", "H-steps = 5", "B = 20").value == 204.60
    assert len([k for k in paper.PUBLISHED if k[0] == "table1"]) == 36
    assert all(
        p.where.startswith(("Table 1", "Table 2", "Table 4")) for p in paper.PUBLISHED.values()
    )


def test_cells_pick_the_best_setting_by_mean_validation(runs):
    records, _ = load_runs(runs)
    t1 = next(t for t in build_tables(records) if t.key == "table1")
    cell = t1.cells[("H-steps = 1", "B = 20")]
    assert (cell.n_settings, cell.setting) == (2, "lam=0.1")
    assert [r.name for r in cell.chosen] == [f"admm_B20_h1_s{s}" for s in (1111, 2222, 3333)]
    assert (cell.stat.mean, cell.stat.std, cell.stat.n) == (128.0, 1.0, 3)
    bptt = t1.cells[("BPTT (K = B)", "B = 20")]
    assert (bptt.stat.n, bptt.unfinished) == (1, 3)  # in progress, failed, not started


def test_figure3_takes_the_better_theta_lr_and_says_it_is_table3s(tmp_path, capsys):
    """Figure 3's hidden-400 point runs at θ-lr 0.1 and 0.01; the cell takes the better, and
    the note tells a departure onto Table 3's grid from one off it."""
    bptt = {**BPTT, "bptt": 10, "hidden": 400}
    for seed, v in zip((1111, 2222), (200.0, 180.0), strict=True):
        fake_run(tmp_path, f"bptt_hid400_K10_s{seed}", bptt, [v], seed, tp=False)
    fake_run(tmp_path, "bptt_hid400_K10_lr0.01_s1111", {**bptt, "lr": 0.01}, [126.0], tp=False)
    assert main(["report", str(tmp_path), "--markdown-only", "--only=figure3"]) == 0
    md = capsys.readouterr().out
    assert "| BPTT (K = 10) | — | — | — | 126.00 (1) |" in md
    assert "- BPTT (K = 10), hidden = 400: lr=0.01 (best of 2 settings)" in md
    assert "lr = 0.01 (protocol 0.1; Table 3's grid has 0.1, 0.01, 0.001)" in md
    fake_run(tmp_path, "bptt_hid400_K10_lr0.05_s1111", {**bptt, "lr": 0.05}, [120.0], tp=False)
    assert main(["report", str(tmp_path), "--markdown-only", "--only=figure3"]) == 0
    assert "lr = 0.05 (protocol 0.1)." in capsys.readouterr().out  # not a point of the grid


def test_figure_labels_a_point_whose_setting_departs_where_the_others_do_not(tmp_path, monkeypatch):
    bptt = {**BPTT, "bptt": 10, "epochs": 2}
    fake_run(tmp_path, "bptt_hid50_K10_s1111", {**bptt, "hidden": 50}, [150.0], tp=False)
    fake_run(tmp_path, "bptt_hid400_K10_s1111", {**bptt, "hidden": 400}, [190.0], tp=False)
    fake_run(tmp_path, "x_s1111", {**bptt, "hidden": 400, "lr": 0.01}, [126.0], tp=False)
    [fig3] = [t for t in build_tables(load_runs(tmp_path)[0]) if t.key == "figure3"]
    # hidden is what the figure varies and epochs = 2 is every point's: neither labels a point
    assert point_labels(fig3) == {("BPTT (K = 10)", "hidden = 400"): "lr=0.01"}
    assert any("epochs = 2" in n for n in fig3.notes)
    drawn = []  # and the figure writes it beside that point
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.extend(fig.axes[0].texts))
    assert plot.figure3_figure([fig3], tmp_path / "f.png")
    assert [(t.get_text(), t.xy[1]) for t in drawn] == [("lr=0.01", 126.0)]
    fake_run(tmp_path, "y_s1111", {**bptt, "hidden": 50, "lr": 0.01}, [140.0], tp=False)
    [fig3] = [t for t in build_tables(load_runs(tmp_path)[0]) if t.key == "figure3"]
    assert point_labels(fig3) == {}  # lr = 0.01 at every point now: the note says it


def test_report_markdown_csv_and_figures_are_deterministic(runs, capsys):
    assert main(["report", str(runs)]) == 0
    md = (runs / "report.md").read_text()
    assert "| H-steps = 1 | — | — | 128.00 ± 1.00 (3) · 127.43 · +0.4 % |" in md
    assert "| BPTT (K = B) | — | — | 130.00 (1) · 128.16 · +1.4 % (+3 not finished) |" in md
    assert "- H-steps = 1, B = 20: lam=0.1 (best of 2 settings)" in md
    assert "| H-steps = 0 | -0.50 | -0.40 | -0.10 | 127.50 (1) · 128.00 · -0.4 % |" not in md
    assert "| H-steps = 0 | -0.50 | -0.40 | -0.10 | 127.50 (1) |" in md
    assert "| H-steps = 0 & λ = 0 | +3.00 | +2.36 | +0.64 | 131.00 (1) |" in md
    assert "| H-steps = 2 | 140.00 (1) | — | — | — |" in md  # Figure 3, hidden = 50 first
    assert "differs from the paper's protocol: epochs = 2 (protocol 10)" in md
    assert "| broken_s1111 | failed |  |  |  |  | exit 2: tprop: error: boom |" in md
    assert (
        "| bptt_K20_s2222 | in progress or interrupted |  |  | 1 |  | resumable "
        "(checkpoint.pt); at epoch 1: best valid ppl 170.00 |" in md
    )
    assert "| later_s1111 | not started |" in md
    assert "Grid `mine`: fake runs" in md
    csv = (runs / "report.csv").read_text().splitlines()
    assert csv[0].startswith("table,section,row,column,ours_mean,ours_std,n,paper,diff")
    assert (
        "table1,Minibatch PTB,H-steps = 1,B = 20,128.0000,1.0000,3,127.43,0.45,%,0,2,"
        "lam=0.1,admm_B20_h1_s1111 admm_B20_h1_s2222 admm_B20_h1_s3333"
    ) in csv
    assert (
        "table2,Minibatch PTB,H-steps = 0 & λ = 0,Δ PPL,131.0000,,1,2.36,0.64,ppl,0,1,,"
        "admm_B20_h0_lam0_s1111" in csv
    )
    figures = sorted(p.name for p in (runs / "figures").iterdir())
    assert figures == ["figure3.png", "learning-curves.png", "table1.png"]
    first = {p: p.read_bytes() for p in runs.rglob("*") if p.suffix in (".md", ".csv", ".png")}
    assert main(["report", str(runs)]) == 0
    assert {p: p.read_bytes() for p in first} == first  # byte for byte
    capsys.readouterr()
    assert main(["report", str(runs), "--markdown-only"]) == 0
    alone = capsys.readouterr().out
    assert alone.startswith("Each cell: ours") and "## Runs" not in alone
    assert alone in md  # the README's table is the report's
    assert main(["report", str(runs), "--markdown-only", "--only=figure3,table2"]) == 0
    some = capsys.readouterr().out
    assert "### Figure 3" in some and "### Table 2" in some and "### Table 1" not in some


def test_report_on_the_published_ptb_b20_runs(tmp_path):
    """The repository's own result folders (no sweep.json) give the README's numbers."""
    src = Path(__file__).resolve().parents[1] / "docs" / "results" / "ptb-b20"
    if not src.is_dir():
        pytest.skip("docs/results/ptb-b20 not present")
    records, manifest = load_runs(src)
    assert manifest == {} and len(records) == 25
    t1 = next(t for t in build_tables(records) if t.key == "table1")
    admm, bptt = t1.cells[("H-steps = 1", "B = 20")], t1.cells[("BPTT (K = B)", "B = 20")]
    assert (round(admm.stat.mean, 2), round(admm.stat.std, 2), admm.n_settings) == (
        128.99,
        0.48,
        18,
    )
    assert admm.setting == "preset=tprnn lam=0.1 h_lr=0.001"
    assert (round(bptt.stat.mean, 2), round(bptt.stat.std, 2)) == (132.04, 6.27)


def test_plot_writes_a_png(runs, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert (
        main(
            [
                "plot",
                str(runs / "admm_B20_h1_s1111"),
                str(runs / "bptt_K20_s1111"),
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = png.read_bytes()
    assert (
        main(
            [
                "plot",
                str(runs / "admm_B20_h1_s1111"),
                str(runs / "bptt_K20_s1111"),
                "--out",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes() == first


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["report", "{tmp}/nowhere"], "is not a folder of runs"),
        (["report", "{tmp}/empty"], "holds no run folders"),
        (["plot", "{tmp}/empty", "--out", "{tmp}/x.png"], "is not a run folder"),
        (["plot", "{tmp}/nowhere", "--out", "{tmp}/x.png"], "is not a run folder"),
        (["plot", "{run}", "--out", "{tmp}/x.pdf"], "give a .png file"),
        (["report", "{tmp}/empty", "--only", "table3"], "give one or more of table1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, argv, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, run=runs / "bptt_K20_s1111") for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_table4_words_and_characters_in_the_papers_layout_with_its_figure(tmp_path):
    """Table 4 by minibatch size: word perplexity and bits per character (from the run's
    train/nll and test_bits), the paper's values beside ours, n/c where datasets differ."""
    root = tmp_path / "t4"
    lstm = {**BASE, "method": "bptt", "cell": "lstm"}
    for bs, v in ((64, 120.0), (256, 130.0)):
        fake_run(root, f"w{bs}", {**lstm, "dataset": "wikitext-2", "layers": 2, "hidden": 512,
                                  "bptt": 30, "batch_size": bs}, [v + 10, v], tp=False)  # fmt: skip
    for bs, bits in ((64, 1.5), (16000, 2.0)):
        folder = fake_run(root, f"c{bs}", {**lstm, "dataset": "ptb-char", "layers": 1,
                                           "hidden": 128, "bptt": 75, "batch_size": bs},
                          [3.0, 2.9], tp=False)  # fmt: skip
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        lines[1]["train/nll"] = bits * math.log(2) - 0.1
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "test_bits": bits}))
    assert main(["report", str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "Table 4: BPTT perplexity by minibatch size (columns)" in md
    assert "Table 4: BPTT bits per character by minibatch size (columns)" in md
    assert "| test | 115.00 (1) · 47.70 · n/c | 125.00 (1) · 49.10 · n/c |" in md
    assert "| test | 1.50 (1) · 1.39 · n/c | — | — | — | 2.00 (1) · 1.47 · n/c |" in md
    assert "| training | 1.36 (1) · 1.35 · n/c |" in md  # (1.5·ln 2 − 0.1) / ln 2
    assert (
        "ours: LSTM 1 × 128, K = 75 on ptb-char; the paper's: 1-layer LSTM 1024, K = 75 on text8"
        in md
    )
    assert (root / "figures" / "table4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DOC = """# Results

Intro text stays.

<!-- report: sweep --only=figure3 -->
an old table
<!-- end report -->

Between the blocks.

<!-- report: sweep --settings -->
<!-- end report -->
The end.
"""


def markdown(argv, capsys) -> str:
    assert main(["report", *argv, "--markdown-only"]) == 0
    return capsys.readouterr().out.strip()


def test_update_docs_rewrites_the_blocks_and_nothing_else(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    assert main(["report", "--update-docs", "doc.md", "--check"]) == 1
    assert "stale: doc.md:5 (sweep)" in capsys.readouterr().out and doc.read_text() == DOC
    assert main(["report", "--update-docs", "doc.md"]) == 0
    assert "2 report blocks updated in 1 document" in capsys.readouterr().out
    fig3, settings = (
        markdown(["sweep", "--only=figure3"], capsys),
        markdown(["sweep", "--settings"], capsys),
    )
    assert "### Figure 3" in fig3 and "#### Settings" in settings
    want = DOC.replace("an old table", fig3).replace(
        "--settings -->\n", f"--settings -->\n{settings}\n"
    )
    assert doc.read_text() == want
    assert main(["report", "--update-docs", "doc.md", "--check"]) == 0
    assert "0 stale report blocks in 1 document" in capsys.readouterr().out


@pytest.mark.parametrize(
    "block, needle",
    [
        ("<!-- report: sweep --markdown-only -->\n<!-- end report -->\n", "unknown flag"),
        (
            "<!-- report: sweep -->\nno end\n<!-- report: sweep -->\n<!-- end report -->\n",
            "doc.md:1",
        ),
        ("<!-- report:  -->\n<!-- end report -->\n", "names no folder"),
        ("<!-- report: nowhere -->\n<!-- end report -->\n", "is not a folder of runs"),
        ("no blocks at all\n", "has no <!-- report: DIR --> block"),
    ],
)
def test_update_docs_bad_input_writes_nothing(runs, tmp_path, monkeypatch, capsys, block, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.md").write_text(DOC)
    (tmp_path / "doc.md").write_text(block)
    assert main(["report", "--update-docs", "good.md", "doc.md"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert (tmp_path / "good.md").read_text() == DOC  # the good document is not written either


@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "--update-docs", "doc.md"],
        ["--check"],
        [],
        ["--update-docs", "doc.md", "--only=table1"],
    ],
    ids=["both", "check", "none", "flag"],
)
def test_report_wants_a_folder_or_documents(runs, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("--update-docs" in err), err
