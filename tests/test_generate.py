"""`tprop generate` (tprop.generate): N tokens sampled from softmax(logits / T) and fed back,
deterministic for a seed, a prompt read like the corpus, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tprop.cli import main
from tprop.data.corpus import EOS, UNK, Vocab
from tprop.evaluate import load_run
from tprop.generate import generate, prompt_ids, render
from tprop.model import RNNLM


def _generate(run: Path, capsys, *flags: str) -> tuple[int, str, str]:
    code = main(["generate", "--checkpoint", str(run), "--device", "cpu", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_n_tokens_and_the_seed_fixes_the_text(tiny_run, capsys):
    """--words N prints the N sampled tokens (<eos> as a line break); the same seed gives the
    same text, another seed another; the text is `render` of the function's sample."""
    code, text, err = _generate(tiny_run, capsys, "--words", "40", "--seed", "3")
    assert code == 0 and err == ""
    _, corpus, model, _ = load_run(tiny_run, "best", None, "cpu")
    ids = generate(model, corpus.vocab, 40, 1.0, 3, prompt_ids(corpus.vocab.stoi, "")[0])
    assert len(ids) == 40 and text == render(corpus.vocab.itos, ids)
    n_eos = ids.count(corpus.vocab.stoi[EOS])
    assert len(text.split()) + n_eos == 40
    assert text.count("\n") == n_eos + (ids[-1] != corpus.vocab.stoi[EOS])
    assert _generate(tiny_run, capsys, "--words", "40", "--seed", "3")[1] == text
    assert _generate(tiny_run, capsys, "--words", "40", "--seed", "4")[1] != text


def test_prompt_is_read_first_and_out_writes_the_text(tiny_run, capsys, tmp_path):
    """The CLI's sample is the function's after reading <eos> and the prompt's ids; --out
    writes the printed text to a file."""
    out = tmp_path / "sample.txt"
    prompt = "w1 w2\nw3"
    code, text, err = _generate(
        tiny_run, capsys, "--words", "30", "--prompt", prompt, "--out", str(out)
    )
    assert code == 0 and err == ""
    _, corpus, model, _ = load_run(tiny_run, "best", None, "cpu")
    ids = prompt_ids(corpus.vocab.stoi, prompt)[0]
    assert ids == [corpus.vocab.stoi[w] for w in ["<eos>", "w1", "w2", "<eos>", "w3"]]
    assert text == render(corpus.vocab.itos, generate(model, corpus.vocab, 30, 1.0, 1111, ids))
    assert out.read_text() == text


def test_tiny_temperature_is_greedy_decoding_after_the_prompt(tiny_run):
    """As T → 0 the draw is the argmax, whatever the seed: the sample is the greedy rollout
    from the state the whole prompt leaves. The global RNG is not touched."""
    _, corpus, model, _ = load_run(tiny_run, "best", None, "cpu")
    prompt = [0, 3, 5, 3]
    rng = torch.get_rng_state()
    a = generate(model, corpus.vocab, 15, 1e-8, 1, prompt)
    b = generate(model, corpus.vocab, 15, 1e-8, 2, prompt)
    assert torch.equal(torch.get_rng_state(), rng)
    greedy, x = [], torch.tensor(prompt).view(-1, 1)
    with torch.no_grad():
        logits, state = model(x, model.zero_state(1))
        for _ in range(15):
            greedy.append(int(logits[-1, 0].argmax()))
            logits, state = model(torch.tensor([[greedy[-1]]]), state)
    assert a == b == greedy


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--temperature", "0"], "--temperature must be a number > 0"),
        (["--temperature", "-1"], "--temperature must be a number > 0"),
        (["--temperature", "nan"], "--temperature must be a number > 0"),
        (["--temperature", "inf"], "--temperature must be a number > 0"),
        (["--words", "0"], "--words must be >= 1"),
        (["--seed", "-1"], "--seed must be in [0, 2**63)"),
        (["--prompt", "w1 nosuchword w2"], f"has no {UNK}: nosuchword"),
    ],
)
def test_bad_settings_are_one_line(tiny_run, capsys, flags, says):
    code, out, err = _generate(tiny_run, capsys, *flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and says in err


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_bad_checkpoint_is_one_line(tmp_path, capsys, where):
    path = tmp_path / "nope" if where == "missing" else tmp_path
    code, out, err = _generate(path, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "does not exist" in err


def test_another_vocabulary_is_one_line(tiny_run, capsys, tmp_path):
    """--data-dir with a corpus whose vocabulary differs from the checkpoint's is refused."""
    from conftest import write_tiny_ptb

    data = write_tiny_ptb(tmp_path / "other")
    train = data / "ptb" / "train.txt"
    train.write_text(train.read_text() + " one more word\n")
    code, _, err = _generate(tiny_run, capsys, "--data-dir", str(data))
    assert code == 2 and err.count("\n") == 1 and "differs from the checkpoint's" in err


def test_unknown_prompt_words_are_unk_with_a_note(tiny_run, capsys, tmp_path):
    """With <unk> in the vocabulary, unknown prompt words are read as <unk> and named once on
    stderr. (The corpus here is the run's with w39 written as <unk>: the same shape, so the
    checkpoint loads with it.)"""
    from conftest import write_tiny_ptb

    data = write_tiny_ptb(tmp_path / "unk")
    for split in ("train", "valid", "test"):
        f = data / "ptb" / f"{split}.txt"
        f.write_text(f.read_text().replace("w39", UNK))
    prompt = "w1 zz w2 zz yy\nw3"
    code, text, err = _generate(tiny_run, capsys, "--data-dir", str(data), "--prompt", prompt)
    assert code == 0 and text
    assert err == "tprop: note: prompt words not in the ptb vocabulary, read as <unk>: zz yy\n"


def test_prompt_ids_read_the_prompt_like_the_corpus():
    """<eos> first, words split on whitespace, a line break inside the prompt is <eos>;
    without <eos> in the vocabulary a line break is only whitespace."""
    itos = ["<eos>", "a", "b", UNK]
    stoi = {w: i for i, w in enumerate(itos)}
    assert prompt_ids(stoi, "") == ([0], [])
    assert prompt_ids(stoi, " a  b\n\tb x\n") == ([0, 1, 2, 0, 2, 3, 0], ["x"])
    no_eos = {"a": 0, "b": 1, UNK: 2}
    assert prompt_ids(no_eos, "a\nb q") == ([0, 1, 2], ["q"])


def test_render_breaks_lines_at_eos_or_every_20_words():
    itos = ["<eos>", "a", "b"]
    assert render(itos, [1, 2, 0, 0, 1]) == "a b\n\na\n"
    assert render(itos, [0]) == "\n"
    assert render(itos, [1, 0]) == "a\n"
    words = ["a", "b"]
    text = render(words, [0] * 45)
    assert [len(line.split()) for line in text.splitlines()] == [20, 20, 5]


def test_no_prompt_and_no_eos_starts_from_a_drawn_token():
    """pytorch/examples starts from a uniformly drawn token; so does a vocabulary without
    <eos> (text8), reproducibly for a seed."""
    torch.manual_seed(0)
    model = RNNLM(7, 8)
    vocab = Vocab(itos=[f"t{i}" for i in range(7)], stoi={f"t{i}": i for i in range(7)})
    a = generate(model, vocab, 12, 1.0, 5)
    assert a == generate(model, vocab, 12, 1.0, 5) and len(a) == 12
    assert all(0 <= i < 7 for i in a)
