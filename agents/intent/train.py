"""Train and evaluate the local intent classifier.

    python -m agents.intent.train              # retrain from data/train.jsonl, rewrite data/local_model.json
    python -m agents.intent.train --evaluate   # score the shipped artifact on the held-out data/eval.jsonl
    python -m agents.intent.train --cv         # cross-validate the hyperparameters on train.jsonl alone

Training is deterministic (a fixed feature list, lbfgs, no random state involved), so the committed
artifact is a pure function of train.jsonl; a unit test retrains and compares. Hyperparameters are chosen
with `--cv` on the training set only; eval.jsonl (written separately, other businesses and phrasings) is
only ever scored, never trained or tuned on.

scikit-learn is imported only inside the training functions; `evaluate` and the data helpers work
without it, so a benchmark can score any classifier cheaply.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agents.intent import Classification, Classifier, Intent, local

DATA_DIR = Path(__file__).parent / "data"
TRAIN_PATH = DATA_DIR / "train.jsonl"
EVAL_PATH = DATA_DIR / "eval.jsonl"

# Chosen by 5-fold cross-validation on train.jsonl (`--cv`).
INTENT_C = 10.0
LANGUAGE_C = 10.0
# A feature seen in a single training message is mostly noise and only grows the artifact.
MIN_DF = 2
# Five decimals keep the artifact small and its text stable across BLAS builds; predictions do not move.
_DECIMALS = 5


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled message from train.jsonl / eval.jsonl."""

    text: str
    intent: Intent
    language: str  # "en", "fr", "es" or "und"


def load_examples(path: Path) -> list[Example]:
    """Read a JSONL file of {"text", "intent", "language"} objects."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                rows.append(Example(item["text"], Intent(item["intent"]), item["language"]))
            except (ValueError, KeyError) as error:
                raise ValueError(f"{path}:{number}: {error}") from error
    return rows


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in the artifact to tie it to its training data)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- training -------------------------------------------------------------------------------------


def fit_linear(
    documents: Sequence[Sequence[str]], labels: Sequence[str], *, c: float, min_df: int = MIN_DF
) -> local.LinearModelJSON:
    """Fit a multinomial logistic regression on binary, L2-normalised features; return its JSON form."""
    import numpy as np
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    document_frequency = Counter(feature for document in documents for feature in set(document))
    names = sorted(feature for feature, count in document_frequency.items() if count >= min_df)
    index = {name: i for i, name in enumerate(names)}

    indptr, indices, values = [0], [], []
    for document in documents:
        rows = sorted({index[feature] for feature in document if feature in index})
        indices.extend(rows)
        # Must match LinearModel.probabilities: presence only, scaled to unit L2 norm.
        values.extend([1.0 / math.sqrt(len(rows))] * len(rows) if rows else [])
        indptr.append(len(indices))
    matrix = sparse.csr_matrix((values, indices, indptr), shape=(len(documents), len(names)))

    model = LogisticRegression(C=c, max_iter=5000, tol=1e-6)
    model.fit(matrix, list(labels))
    classes = [str(label) for label in model.classes_]
    coef = np.asarray(model.coef_, dtype=np.float64)
    if len(classes) == 2:
        # sklearn keeps one row for two classes; softmax over (-w/2, w/2) gives the same probabilities.
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = [-model.intercept_[0] / 2, model.intercept_[0] / 2]
    else:
        intercept = list(model.intercept_)
    return {
        "classes": classes,
        "intercept": [_round(value) for value in intercept],
        "features": [(name, [_round(value) for value in coef[:, i]]) for i, name in enumerate(names)],
    }


def _round(value: float) -> float:
    rounded = round(float(value), _DECIMALS)
    return 0.0 if rounded == 0 else rounded  # no "-0.0" in the file


def train(rows: Sequence[Example], train_sha256: str) -> local.ArtifactJSON:
    """Both models from `rows`: intent on every row, language on rows labelled en/fr/es with letters."""
    intent = fit_linear([local.intent_features(row.text) for row in rows], [row.intent.value for row in rows],
                        c=INTENT_C)
    # "und" rows ("ok", emoji) teach the language model nothing: und is decided by rule and threshold.
    language_rows = [row for row in rows if row.language in local.LANGUAGES and local.has_letters(row.text)]
    language = fit_linear([local.language_features(row.text) for row in language_rows],
                          [row.language for row in language_rows], c=LANGUAGE_C)
    return {"version": local.MODEL_VERSION, "train_sha256": train_sha256, "intent": intent, "language": language}


def dumps(artifact: local.ArtifactJSON) -> str:
    """The artifact as JSON with one feature per line, so that a retrain shows up as a readable diff."""

    def model(data: local.LinearModelJSON) -> str:
        features = ",\n".join(
            "   " + json.dumps([name, weights], ensure_ascii=False) for name, weights in data["features"]
        )
        return (
            f'{{\n  "classes": {json.dumps(data["classes"])},\n'
            f'  "intercept": {json.dumps(data["intercept"])},\n'
            f'  "features": [\n{features}\n  ]\n }}'
        )

    return (
        f'{{\n "version": {json.dumps(artifact["version"])},\n'
        f' "train_sha256": {json.dumps(artifact["train_sha256"])},\n'
        f' "intent": {model(artifact["intent"])},\n'
        f' "language": {model(artifact["language"])}\n}}\n'
    )


def build(train_path: Path = TRAIN_PATH, out: Path = local.ARTIFACT_PATH) -> local.ArtifactJSON:
    """Retrain from `train_path` and write the artifact to `out`."""
    artifact = train(load_examples(train_path), file_sha256(train_path))
    out.write_text(dumps(artifact), encoding="utf-8")
    local.load_models.cache_clear()  # a classifier built after this must see the new weights
    return artifact


# --- evaluation -----------------------------------------------------------------------------------


class SyncClassifier(Protocol):
    def classify_sync(self, text: str) -> Classification: ...


@dataclass(frozen=True, slots=True)
class IntentScore:
    """Precision, recall and F1 of one intent; `support` is how many gold rows carry it."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, slots=True)
class Report:
    """Scores of a classifier on labelled rows.

    `macro_f1` averages F1 over the intents that occur in the gold labels or the predictions (as
    scikit-learn does); `language_accuracy` counts only rows whose gold language is en/fr/es/und.
    """

    total: int
    accuracy: float
    macro_f1: float
    per_intent: Mapping[Intent, IntentScore]
    language_accuracy: float
    errors: tuple[tuple[Example, Classification], ...]

    def format(self, max_errors: int = 20) -> str:
        """A human-readable table, followed by up to `max_errors` misclassified rows."""
        lines = [
            f"rows {self.total}  accuracy {self.accuracy:.3f}  macro-F1 {self.macro_f1:.3f}  "
            f"language accuracy {self.language_accuracy:.3f}",
            f"{'intent':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
        ]
        for intent, score in self.per_intent.items():
            lines.append(f"{intent.value:<16}{score.precision:>10.3f}{score.recall:>10.3f}{score.f1:>10.3f}"
                         f"{score.support:>10}")
        for example, got in self.errors[:max_errors]:
            lines.append(f"  {example.intent.value} -> {got.intent.value} ({got.confidence:.2f}, "
                         f"{got.implementation}): {example.text!r}")
        return "\n".join(lines)


def score(pairs: Iterable[tuple[Example, Classification]]) -> Report:
    """Score (gold row, classification) pairs."""
    pairs = list(pairs)
    gold = Counter(example.intent for example, _ in pairs)
    predicted = Counter(got.intent for _, got in pairs)
    correct = Counter(example.intent for example, got in pairs if got.intent is example.intent)
    per_intent = {}
    for intent in Intent:
        if not gold[intent] and not predicted[intent]:
            continue
        precision = correct[intent] / predicted[intent] if predicted[intent] else 0.0
        recall = correct[intent] / gold[intent] if gold[intent] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_intent[intent] = IntentScore(precision, recall, f1, gold[intent])
    languages = [(example, got) for example, got in pairs if example.language in (*local.LANGUAGES, "und")]
    total = len(pairs)
    return Report(
        total=total,
        accuracy=sum(correct.values()) / total if total else 0.0,
        macro_f1=sum(s.f1 for s in per_intent.values()) / len(per_intent) if per_intent else 0.0,
        per_intent=per_intent,
        language_accuracy=(sum(got.language == example.language for example, got in languages) / len(languages)
                           if languages else 0.0),
        errors=tuple((example, got) for example, got in pairs if got.intent is not example.intent),
    )


def evaluate(classifier: SyncClassifier | Callable[[str], Classification], rows: Iterable[Example]) -> Report:
    """Score a synchronous classifier (an object with `classify_sync`, or a function) on `rows`."""
    classify = classifier if callable(classifier) else classifier.classify_sync
    return score((row, classify(row.text)) for row in rows)


async def evaluate_async(classifier: Classifier, rows: Iterable[Example]) -> Report:
    """Score any `Classifier` (the OpenAI one, say) on `rows`, one message at a time."""
    return score([(row, await classifier.classify(row.text)) for row in rows])


# --- tuning ---------------------------------------------------------------------------------------


def cross_validate(rows: Sequence[Example], c_values: Sequence[float], folds: int = 5) -> dict[float, float]:
    """Mean macro-F1 of the intent model alone, per C, over stratified folds of `rows` (train data only)."""
    from sklearn.model_selection import StratifiedKFold

    features = [local.intent_features(row.text) for row in rows]
    labels = [row.intent.value for row in rows]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    results = {}
    for c in c_values:
        scores = []
        for train_index, test_index in splitter.split(features, labels):
            model = local.LinearModel.from_json(
                fit_linear([features[i] for i in train_index], [labels[i] for i in train_index], c=c)
            )

            def classify(i: int, model: local.LinearModel = model) -> Classification:
                probabilities = model.probabilities(model.known(features[i]))
                best = int(probabilities.argmax())
                return Classification(Intent(model.classes[best]), float(probabilities[best]), "und", "local")

            scores.append(score((rows[i], classify(i)) for i in test_index).macro_f1)
        results[c] = sum(scores) / len(scores)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m agents.intent.train", description=__doc__.splitlines()[0])
    parser.add_argument("--evaluate", action="store_true", help="score the shipped artifact on eval.jsonl")
    parser.add_argument("--cv", action="store_true", help="cross-validate C on train.jsonl")
    parser.add_argument("--train", type=Path, default=TRAIN_PATH, help="training set (JSONL)")
    parser.add_argument("--eval", type=Path, default=EVAL_PATH, help="held-out set (JSONL)")
    parser.add_argument("--out", type=Path, default=local.ARTIFACT_PATH, help="artifact to write / evaluate")
    args = parser.parse_args(argv)

    if args.cv:
        for c, macro_f1 in cross_validate(load_examples(args.train), [0.3, 1.0, 3.0, 10.0, 30.0, 100.0]).items():
            print(f"C={c:<6} cross-validated macro-F1 {macro_f1:.3f}")
        return 0
    if args.evaluate:
        classifier = local.LocalClassifier(args.out)
        rows = load_examples(args.eval)
        print(f"full classifier (rules + model) on {args.eval.name}:")
        print(evaluate(classifier, rows).format())
        model_only = evaluate(classifier.classify_model, rows)
        print(f"\nmodel alone: accuracy {model_only.accuracy:.3f}  macro-F1 {model_only.macro_f1:.3f}")
        return 0
    artifact = build(args.train, args.out)
    print(f"wrote {args.out}: {len(artifact['intent']['features'])} intent features, "
          f"{len(artifact['language']['features'])} language features, {args.out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
