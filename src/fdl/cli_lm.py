"""`fdl train-charlm`: train a character-level language model from the command line.

The model and its training are `fdl.models.charlm`; this module is the command:
options checked before the first compile, a checkpoint saved atomically every
`--save-every` chunks and at the end, `--resume` continuing bitwise (the checkpoint
holds params, optimizer state, the batch key and the step), and Ctrl-C or SIGTERM
stopping at the next chunk boundary — a chunk of `--eval-every` steps is one compiled
program, the nearest point where the state is whole — with the checkpoint saved and
the command to continue printed (exit 128 + the signal; a second signal stops at once,
leaving the last checkpoint intact). The signal handling, errors and argument types are
`fdl train`'s: `fdl.cli` hands its own module to `add_parser` (this module does not import
it, so the two form no import cycle).
"""

from __future__ import annotations

import argparse
import math
import signal
from typing import Any

DEFAULTS = {"model": "transformer", "d_model": 64, "layers": 2, "heads": 4, "dropout": 0.0,
            "seq_len": 64, "batch_size": 32, "lr": 3e-3, "seed": 0}
SHAPING = ("model", "d_model", "layers", "heads", "dropout", "seq_len", "batch_size", "lr",
           "seed")


def add_parser(sub: Any, cli: Any) -> None:
    """Register `train-charlm` on the `fdl` command's subparsers; `cli` is the `fdl.cli`
    module, whose helpers (`_number`, `_Signals`, `_note`, `UsageError`, `Failure`) the
    command uses."""
    _number = cli._number

    t = sub.add_parser(
        "train-charlm", help="train a character-level language model on the shipped sonnets",
        description="Train a character-level causal transformer (or LSTM) on 22 of "
        "Shakespeare's sonnets (public domain, shipped with fdl), print the validation loss "
        "and a sample. Ctrl-C (or SIGTERM) stops at the next chunk of --eval-every steps "
        "and saves a checkpoint that --resume continues bitwise. With --resume, options "
        "left out are taken from the checkpoint; options given must match it.")
    t.add_argument("--model", choices=("transformer", "lstm"), default=None,
                   help="transformer (default) or lstm")
    t.add_argument("--steps", type=_number(int, 1, what="an int"), default=1000,
                   help="train until this many steps in total (default 1000)")
    t.add_argument("--eval-every", type=_number(int, 1, what="an int"), default=100,
                   help="steps per compiled chunk; validation loss printed after each")
    t.add_argument("--save-every", type=_number(int, 0, what="an int"), default=1,
                   help="save the checkpoint every this many chunks (0: only at the end)")
    t.add_argument("--d-model", type=_number(int, 1, what="an int"), default=None)
    t.add_argument("--layers", type=_number(int, 1, what="an int"), default=None)
    t.add_argument("--heads", type=_number(int, 1, what="an int"), default=None)
    t.add_argument("--dropout", default=None,
                   type=_number(float, 0.0, high=1.0, high_open=True, what="a number"))
    t.add_argument("--seq-len", type=_number(int, 2, what="an int"), default=None)
    t.add_argument("--batch-size", type=_number(int, 1, what="an int"), default=None)
    t.add_argument("--lr", type=_number(float, 0.0, low_open=True, what="a number"),
                   default=None)
    t.add_argument("--seed", type=_number(int, 0, what="an int"), default=None)
    t.add_argument("--checkpoint", default="fdl-charlm.npz",
                   help="where to save (default fdl-charlm.npz; '' = no checkpoint)")
    t.add_argument("--resume", default=None, help="continue from this checkpoint")
    t.add_argument("--sample", type=_number(int, 0, what="an int"), default=200,
                   help="characters to sample after training (default 200)")
    t.add_argument("--temperature", type=_number(float, 0.0, low_open=True,
                                                 what="a number"), default=0.8)
    t.add_argument("--prompt", default="Shall I compare thee")
    t.add_argument("--quiet", action="store_true", help="print only the results")
    t.set_defaults(run=lambda args: run(args, cli))


def _settings(args: argparse.Namespace, recorded: dict | None, UsageError: type) -> dict:
    given = {k: getattr(args, k) for k in SHAPING if getattr(args, k) is not None}
    if recorded is None:
        return DEFAULTS | given
    clash = {k: (v, recorded[k]) for k, v in given.items() if recorded.get(k) != v}
    if clash:
        k, (v, r) = next(iter(clash.items()))
        raise UsageError(f"--{k.replace('_', '-')} {v} does not match the checkpoint "
                         f"{args.resume}, which was trained with {r}; leave it out to "
                         "continue with the checkpoint's value")
    return dict(recorded)


def run(args: argparse.Namespace, cli: Any) -> int:
    """The `train-charlm` command (see the module docstring); `cli` is `fdl.cli`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fdl import io, optim
    Failure, UsageError, _note, _Signals = cli.Failure, cli.UsageError, cli._note, cli._Signals
    from fdl.models import charlm

    recorded, history = None, []
    if args.resume:
        try:
            meta = io.load_metadata(args.resume)
        except (OSError, ValueError) as e:
            raise UsageError(f"--resume {args.resume}: {e}") from None
        if not isinstance(meta, dict) or meta.get("kind") != "charlm":
            raise UsageError(f"--resume {args.resume}: not a train-charlm checkpoint")
        recorded, history = meta["settings"], list(meta.get("history", []))
    s = _settings(args, recorded, UsageError)
    if s["model"] == "transformer" and s["d_model"] % s["heads"]:
        raise UsageError(f"--heads {s['heads']} must divide --d-model {s['d_model']}")
    text = charlm.load_corpus()
    vocab = charlm.Vocabulary(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    if s["seq_len"] + 2 > len(ids) - split:
        raise UsageError(f"--seq-len {s['seq_len']} is longer than the validation text "
                         f"({len(ids) - split} characters)")
    missing = sorted(set(args.prompt) - set(vocab.chars))
    if missing or not args.prompt:
        raise UsageError(f"--prompt must be a non-empty text of the corpus's characters; "
                         f"{missing} are not among them")
    model = charlm.build(s["model"], len(vocab), d_model=s["d_model"], num_layers=s["layers"],
                         num_heads=s["heads"], dropout=s["dropout"])
    optimizer = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(s["lr"]))
    _, params, model_state = model.init(jax.random.key(s["seed"]), (s["seq_len"],))
    state = charlm.LMState(params, optimizer.init(params), jax.random.key(s["seed"] + 1),
                           jnp.int32(0))
    if args.resume:
        try:
            state = charlm.LMState(*io.load(args.resume, like=tuple(state)))
        except ValueError as e:
            raise UsageError(f"--resume {args.resume}: {e}") from None
    start = int(state.step)
    if start >= args.steps:
        raise UsageError(f"the checkpoint has already trained {start} steps; ask for more "
                         f"with --steps (e.g. --steps {start + args.eval_every})")
    data, programs = jnp.asarray(ids[:split]), {}

    def chunk(st: Any) -> tuple[Any, Any]:  # --eval-every steps, or fewer to end at --steps
        n = min(args.eval_every, args.steps - int(st.step))
        if n not in programs:
            programs[n] = jax.jit(charlm.train_chunk(
                model, optimizer, data, seq_len=s["seq_len"], batch_size=s["batch_size"],
                steps=n, dropout=s["dropout"] > 0, state=model_state))
        return programs[n](st)

    n_val = (len(ids) - split - 1) // s["seq_len"]
    val = ids[split: split + n_val * s["seq_len"] + 1]
    x_val = jnp.asarray(val[:-1].reshape(n_val, s["seq_len"]))
    y_val = jnp.asarray(val[1:].reshape(n_val, s["seq_len"]))
    val_loss = jax.jit(lambda p: charlm.loss_fn(model, p, x_val, y_val, state=model_state))
    meta = {"kind": "charlm", "settings": s}

    def save(st: Any) -> None:
        if not args.checkpoint:
            return
        try:
            io.save(args.checkpoint, tuple(st), metadata=meta | {"history": history})
        except OSError as e:
            raise Failure(f"could not save the checkpoint to {args.checkpoint}: "
                          f"{e.strerror or e}") from None

    say = (lambda line: None) if args.quiet else print
    say(f"fdl train-charlm: {s['model']} on {len(text)} characters (V = {len(vocab)}, "
        f"uniform log V = {math.log(len(vocab)):.3f} nats/char), steps {start} → {args.steps}")
    chunks = 0
    with _Signals() as signals:
        signals.defer = True
        while int(state.step) < args.steps:
            state, losses = chunk(state)
            record = {"step": int(state.step), "train_loss": float(np.mean(losses)),
                      "val_loss": float(val_loss(state.params))}
            history.append(record)
            chunks += 1
            say(f"step {record['step']:6d}  train loss {record['train_loss']:.4f}  "
                f"validation loss {record['val_loss']:.4f}")
            if signals.signum is not None:
                save(state)
                where = (f"; checkpoint saved to {args.checkpoint} (continue with: fdl "
                         f"train-charlm --resume {args.checkpoint} --steps {args.steps})"
                         if args.checkpoint else "; no checkpoint (--checkpoint '')")
                _note(f"stopped by {signal.Signals(signals.signum).name} after step "
                      f"{int(state.step)}/{args.steps}{where}")
                return 128 + signals.signum
            if args.save_every and chunks % args.save_every == 0:
                save(state)
        signals.defer = False
    save(state)
    print(f"validation loss {history[-1]['val_loss']:.4f}")
    if args.checkpoint:
        print(f"saved {args.checkpoint}")
    if args.sample:
        text_out = charlm.sample(model, state.params, vocab, args.prompt, args.sample,
                                 seq_len=s["seq_len"], temperature=args.temperature,
                                 key=jax.random.key(s["seed"] + 2), state=model_state)
        print(f"sample (temperature {args.temperature:g}):\n{text_out}")
    return 0
