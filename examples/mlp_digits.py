"""The whole fdl pipeline in one file: data, model, gradient check, training,
evaluation, checkpoint.

Run:  python examples/mlp_digits.py [--activation tanh] [--hidden 256,128]
Ask it the course's questions: what happens to the MLP if we add a layer, or
swap ReLU for tanh? Change the flags and compare the printed accuracies.
"""

import argparse

import jax

import fdl
from fdl import layers as L
from fdl.train import Trainer, fit

parser = argparse.ArgumentParser()
parser.add_argument("--hidden", default="512", help="comma-separated hidden sizes")
parser.add_argument("--activation", default="relu")
parser.add_argument("--epochs", type=int, default=40)
args = parser.parse_args()
hidden = [int(h) for h in args.hidden.split(",") if h]

# 1. Data: the embedded digits (8×8 images), standardised with training statistics only.
dataset, _ = fdl.data.standardize_dataset(fdl.data.load_digits(flatten=True))

# 2. Model: a pure (init, apply) pair. Params are a plain dict of arrays.
layers = []
for h in hidden:
    layers += [L.Dense(h, w_init="he_normal"), L.get_activation(args.activation), L.Dropout(0.3)]
model = L.serial(*layers, L.Dense(dataset.num_classes))

# 3. Optimizer: Adam, i.e. bias-corrected moving averages of g and g².
trainer = Trainer(model, fdl.optim.adam(1e-3), loss=fdl.losses.softmax_cross_entropy)
state = trainer.init(jax.random.key(0), dataset.input_shape)

# 4. Check the hand-written gradients against autodiff on one batch before training.
x0, y0 = dataset.x_train[:32], dataset.y_train[:32]
report = fdl.check.model(
    lambda p: trainer.loss_fn(p, state.model_state, x0, y0, train=False)[0], state.params)
print(report)
report.raise_if_failed()

# 5. Train: every epoch is one compiled lax.scan over shuffled batches.
state, history = fit(trainer, state, dataset.x_train, dataset.y_train, epochs=args.epochs,
                     batch_size=64, x_test=dataset.x_test, y_test=dataset.y_test,
                     on_epoch=lambda e, r, s: print(
                         f"epoch {e:3d}  loss {r['train_loss']:.4f}  "
                         f"test acc {r['test_accuracy']:.4f}") if e % 5 == 0 else None)

# 6. Evaluate and save (no pickle; atomic write).
print("test accuracy", trainer.evaluate(state, dataset.x_test, dataset.y_test)["accuracy"])
fdl.io.save("mlp_digits.npz", state)
print("saved mlp_digits.npz")
