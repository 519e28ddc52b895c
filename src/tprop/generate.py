"""`tprop generate`: sample text from a saved run, as pytorch/examples `word_language_model`'s
generate.py does — draw a token from softmax(logits / T), feed it back, repeat.

- The vocabulary is the one of the dataset the run was trained on (`evaluate.load_run`, which
  checks its size against the checkpoint's).
- The model starts from the zero state and reads ``<eos>`` first (where the vocabulary has it),
  so a sample begins like a new line of the corpus; then it reads the prompt, if any. The
  prompt is tokenised like the corpus: ``split()`` within a line, and a line break inside the
  prompt is read as ``<eos>`` (the corpus's line end; none after the prompt's last line). Without
  ``<eos>`` in the vocabulary (text8) and without a prompt, the first input is a token drawn
  uniformly, as in pytorch/examples.
- A prompt word that is not in the vocabulary is read as ``<unk>`` with a one-line note on
  stderr; a vocabulary without ``<unk>`` makes it an error.
- ``--words N`` tokens are sampled (``<eos>`` counts as one) and printed: words separated by
  spaces, ``<eos>`` as a line break (pytorch/examples prints ``<eos>`` literally and breaks
  lines every 20 words; here a vocabulary without ``<eos>`` gets that 20-word wrap). The prompt
  is not echoed.
- Sampling uses its own `torch.Generator` on the CPU seeded by ``--seed``, so a seed gives the
  same text on the same device and weights; the run's global RNG is not touched.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from tprop.config import ConfigError
from tprop.data.corpus import EOS, UNK, Vocab
from tprop.model import RNNLM

WRAP = 20  # words per line where the vocabulary has no <eos> (pytorch/examples)


def add_parser(sub) -> None:
    from tprop.cli import add_config_flags

    g = sub.add_parser(
        "generate",
        help="sample text from a saved run",
        description="Sample text from a saved run: draw from softmax(logits / T), feed the "
        "sample back. <eos> is printed as a line break. See docs/generation.md.",
    )
    g.add_argument(
        "--checkpoint", required=True, metavar="RUN", help="a run folder, or its checkpoint.pt"
    )
    g.add_argument(
        "--words", type=int, default=100, metavar="N", help="tokens to sample [default: 100]"
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="> 0; lower is more conservative, higher more diverse [default: 1.0]",
    )
    g.add_argument("--seed", type=int, default=1111, help="sampling seed [default: 1111]")
    g.add_argument("--prompt", default="", metavar="TEXT", help="text the model reads first")
    g.add_argument(
        "--weights",
        choices=["best", "last"],
        default="best",
        help="best-validation weights or those of the last epoch [default: best]",
    )
    g.add_argument("--out", metavar="FILE", help="also write the text to FILE")
    add_config_flags(
        g,
        ["data_dir", "device"],
        {"data_dir": None, "device": "auto"},
        {"data_dir": "the run's --data-dir"},
    )
    g.set_defaults(handler=run)


def check(words: int, temperature: float, seed: int) -> None:
    """The sampling settings, each refused in one line."""
    if words < 1:
        raise ConfigError(f"--words must be >= 1 (got {words})")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--temperature must be a number > 0 (got {temperature})")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed must be in [0, 2**63) (got {seed})")


def prompt_ids(stoi: dict[str, int], text: str) -> tuple[list[int], list[str]]:
    """What the model reads before sampling: ``<eos>`` (if in the vocabulary), then the prompt's
    tokens, a line break inside the prompt read as ``<eos>``. Returns the ids and the prompt
    words not in the vocabulary (read as ``<unk>``; a vocabulary without it refuses them)."""
    tokens = [EOS] if EOS in stoi else []
    for i, line in enumerate(text.split("\n")):
        if i and EOS in stoi:
            tokens.append(EOS)  # the line break before this line
        tokens += line.split()
    unknown = list(dict.fromkeys(w for w in tokens if w not in stoi))
    if unknown and UNK not in stoi:
        raise ConfigError(
            f"prompt words not in the vocabulary, which has no {UNK}: " + " ".join(unknown)
        )
    return [stoi.get(w, stoi.get(UNK, -1)) for w in tokens], unknown


def generate(
    model: RNNLM,
    vocab: Vocab,
    n_words: int,
    temperature: float,
    seed: int,
    prompt_ids: Sequence[int] = (),
) -> list[int]:
    """Sample ``n_words`` token ids: the model reads ``prompt_ids`` from the zero state (none:
    ``<eos>``, or one token drawn uniformly where the vocabulary has no ``<eos>``), then each
    sample is drawn from softmax(logits / T) and fed back. Deterministic for a seed, given the
    logits: the draws come from a CPU `torch.Generator` of their own."""
    check(n_words, temperature, seed)
    gen = torch.Generator().manual_seed(seed)
    device = model.decoder.weight.device
    was_training = model.training
    model.eval()
    if not prompt_ids:
        eos = vocab.stoi.get(EOS)
        prompt_ids = [int(torch.randint(len(vocab), (1,), generator=gen)) if eos is None else eos]
    out: list[int] = []
    with torch.no_grad():
        x = torch.tensor(list(prompt_ids), device=device).view(-1, 1)
        logits, state = model(x, model.zero_state(1))
        for n in range(n_words):
            last = logits[-1, 0].double().cpu()
            probs = torch.softmax((last - last.max()) / temperature, 0)  # finite for any T > 0
            out.append(int(torch.multinomial(probs, 1, generator=gen)))
            if n + 1 < n_words:
                logits, state = model(torch.tensor([[out[-1]]], device=device), state)
    model.train(was_training)
    return out


def render(itos: Sequence[str], ids: Sequence[int]) -> str:
    """Words separated by spaces, ``<eos>`` as a line break (without ``<eos>`` in the
    vocabulary: a line break every WRAP words); the text ends with a line break."""
    wrap = EOS not in itos
    lines: list[list[str]] = [[]]
    for i in ids:
        word = itos[i]
        if word == EOS:
            lines.append([])
            continue
        lines[-1].append(word)
        if wrap and len(lines[-1]) == WRAP:
            lines.append([])
    if not lines[-1]:
        lines.pop()
    return "".join(" ".join(line) + "\n" for line in lines)


def run(ns: argparse.Namespace) -> int:
    from tprop import fileio
    from tprop.evaluate import load_run

    check(ns.words, ns.temperature, ns.seed)
    cfg, corpus, model, _ = load_run(ns.checkpoint, ns.weights, ns.data_dir, ns.device)
    ids, unknown = prompt_ids(corpus.vocab.stoi, ns.prompt)
    if unknown:
        print(
            f"tprop: note: prompt words not in the {cfg.dataset} vocabulary, read as {UNK}: "
            + " ".join(unknown),
            file=sys.stderr,
        )
    sample = generate(model, corpus.vocab, ns.words, ns.temperature, ns.seed, ids)
    text = render(corpus.vocab.itos, sample)
    sys.stdout.write(text)
    if ns.out:
        fileio.atomic_write(Path(ns.out), lambda fh: fh.write(text.encode()))
    return 0
