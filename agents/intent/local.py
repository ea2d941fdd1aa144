"""The local intent classifier: offline, deterministic, and the default.

A message is read in two steps:

1. Deterministic opt-out / opt-in / help rules. A single compliance keyword (`services.keywords`) always
   decides; so does an opt-out keyword wrapped only in politeness ("STOP PLEASE", "Stop. Thank you") and
   a short list of unmistakable opt-out phrasings in English, French and Spanish ("remove me from your
   list", "arrêtez de m'envoyer...", "no me manden..."). The FCC expects such wording to be honoured
   (47 CFR 64.1200(a)(10)), so it must not depend on a statistical model's mood.
2. Otherwise a linear model over explicit features (words, word bigrams, character n-grams of
   accent-folded words, emoji) gives the intent and its probability. A second linear model over character
   n-grams that keep accents gives the language.

Both models live in one JSON artifact (`data/local_model.json`) that `python -m agents.intent.train`
rebuilds from `data/train.jsonl`; it is plain numbers, so loading it depends on neither pickle nor a
scikit-learn version. The feature functions below are shared by training and inference, which is what
keeps the two in step.
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from agents.intent import Classification, Intent
from services import keywords

MODEL_VERSION = "local-v1"
ARTIFACT_PATH = Path(__file__).parent / "data" / "local_model.json"

RULES_CONFIDENCE = 0.99
LANGUAGES = ("en", "fr", "es")
UNDETERMINED = "und"
# Below this the language model is guessing between languages (typically "ok", "lol", a first name).
_MIN_LANGUAGE_PROBABILITY = 0.6

_KEYWORD_INTENTS = {
    keywords.Keyword.OPT_OUT: Intent.OPT_OUT,
    keywords.Keyword.OPT_IN: Intent.OPT_IN,
    keywords.Keyword.HELP: Intent.HELP,
    # Keyword.YES is absent on purpose: it opts back in only someone already opted out, which the
    # conversation state knows and this classifier does not; as text it is an ordinary reply.
}

# --- text normalisation and features (shared with agents.intent.train) ----------------------------

_WORD_CACHE_SIZE = 50_000
_WORD = re.compile(r"[^\W\d_]+|\d+")
# "yesss" -> "yes", "ouiii" -> "oui", "ayudaaa" -> "ayuda": elongation carries emphasis, not meaning.
_ELONGATION = re.compile(r"([^\W\d_])\1{2,}")
_SKIN_TONES_AND_JOINERS = re.compile("[\U0001f3fb-\U0001f3ff\u200d\ufe0f]")


def _strip_accents(text: str) -> str:
    if text.isascii():
        return text
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def fold(text: str) -> str:
    """Case-, width-, accent- and elongation-folded `text`: people type "desabonner" for "désabonner"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _ELONGATION.sub(r"\1", _strip_accents(text))


def _emoji(text: str) -> list[str]:
    # Skin tones, variation selectors and joiners would split one 👍🏼 into unseen variants of 👍.
    return [ch for ch in _SKIN_TONES_AND_JOINERS.sub("", text) if unicodedata.category(ch) == "So"]


def _char_ngrams(words: Iterable[str], sizes: range, prefix: str) -> list[str]:
    grams: list[str] = []
    for word in words:
        padded = f" {word} "
        for n in sizes:
            grams.extend(f"{prefix}{padded[i:i + n]}" for i in range(len(padded) - n + 1))
    return grams


def _intent_words(text: str) -> tuple[str, list[str]]:
    folded = fold(text)
    return folded, ["#" if token.isdigit() else token for token in _WORD.findall(folded)]


def _intent_word_features(word: str) -> list[str]:
    return [f"w:{word}", *_char_ngrams((word,), range(3, 6), "c:")]


def _intent_other_features(folded: str, words: list[str]) -> list[str]:
    # Sentence boundaries make "stop ..." at the start differ from "... can stop by".
    bounded = ["^", *words, "$"]
    features = [f"b:{a} {b}" for a, b in zip(bounded, bounded[1:], strict=False)]
    features.extend(f"e:{emoji}" for emoji in _emoji(folded))
    if "?" in folded or "¿" in folded:
        features.append("p:?")
    if "!" in folded:
        features.append("p:!")
    return features


def intent_features(text: str) -> list[str]:
    """The intent model's features of `text`, as strings (duplicates allowed; presence is what counts)."""
    folded, words = _intent_words(text)
    features = [f"w:{word}" for word in words]
    features.extend(_intent_other_features(folded, words))
    features.extend(_char_ngrams(words, range(3, 6), "c:"))
    return features


def _language_words(text: str) -> tuple[str, list[str]]:
    text = _ELONGATION.sub(r"\1", unicodedata.normalize("NFKC", text).casefold())
    return text, [token for token in _WORD.findall(text) if not token.isdigit()]


def _language_word_features(word: str) -> list[str]:
    return [f"w:{word}", *_char_ngrams((word,), range(1, 4), "c:")]


def _language_other_features(text: str, words: list[str]) -> list[str]:
    return ["p:¿"] if "¿" in text or "¡" in text else []


def language_features(text: str) -> list[str]:
    """The language model's features: words and character n-grams that keep accents (é, ñ, ç tell)."""
    text, words = _language_words(text)
    features = [f"w:{word}" for word in words]
    features.extend(_char_ngrams(words, range(1, 4), "c:"))
    features.extend(_language_other_features(text, words))
    return features


def has_letters(text: str) -> bool:
    """Whether `text` contains any letter (emoji-only and digit-only replies have no language)."""
    return any(ch.isalpha() for ch in text)


# --- the linear models ----------------------------------------------------------------------------


class LinearModelJSON(TypedDict):
    """One linear model in the artifact; `features` rows are [feature, weight per class]."""

    classes: list[str]
    intercept: list[float]
    features: list[tuple[str, list[float]]]


class ArtifactJSON(TypedDict):
    """The artifact file: both models, and the SHA-256 of the train.jsonl they were trained from."""

    version: str
    train_sha256: str
    intent: LinearModelJSON
    language: LinearModelJSON


@dataclass(frozen=True, slots=True)
class LinearModel:
    """A multinomial logistic regression over binary, L2-normalised string features."""

    classes: tuple[str, ...]
    index: dict[str, int]  # feature -> row of `weights`
    weights: np.ndarray  # shape (features, classes)
    intercept: np.ndarray  # shape (classes,)
    # word -> rows of that word's own features: words recur from message to message, so their
    # n-grams are generated and looked up once (bounded; cleared when full).
    word_rows: dict[str, frozenset[int]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: LinearModelJSON) -> LinearModel:
        """Build from the artifact's JSON form."""
        names = [name for name, _ in data["features"]]
        weights = np.array([row for _, row in data["features"]], dtype=np.float64)
        return cls(
            classes=tuple(data["classes"]),
            index={name: i for i, name in enumerate(names)},
            weights=weights.reshape(len(names), len(data["classes"])),
            intercept=np.array(data["intercept"], dtype=np.float64),
        )

    def known(self, features: Iterable[str]) -> list[int]:
        """Rows of the distinct known features, sorted so that summation order (and so the last bit of
        every score) does not depend on set iteration order."""
        get = self.index.get
        return sorted({row for feature in features if (row := get(feature)) is not None})

    def known_words(self, words: Iterable[str], word_features: Callable[[str], list[str]],
                    others: Iterable[str]) -> list[int]:
        """Same as `known(features)` for features made of each word's own features plus `others`."""
        cache = self.word_rows
        get = self.index.get
        rows: set[int] = {row for feature in others if (row := get(feature)) is not None}
        for word in words:
            cached = cache.get(word)
            if cached is None:
                if len(cache) >= _WORD_CACHE_SIZE:
                    cache.clear()
                cached = cache[word] = frozenset(
                    row for feature in word_features(word) if (row := get(feature)) is not None)
            rows |= cached
        return sorted(rows)

    def probabilities(self, rows: Sequence[int]) -> np.ndarray:
        """Class probabilities for a document whose known features are `rows`."""
        scores = self.intercept.copy()
        if rows:
            # Binary features scaled to unit L2 norm, exactly as in training.
            # take() on an index array is several times cheaper than fancy indexing with a list.
            scores += self.weights.take(np.asarray(rows, dtype=np.intp), axis=0).sum(axis=0) / math.sqrt(len(rows))
        scores -= scores.max()
        exp = np.exp(scores)
        probabilities: np.ndarray = exp / exp.sum()
        return probabilities


@dataclass(frozen=True, slots=True)
class Models:
    """The shipped artifact, loaded."""

    version: str
    intent: LinearModel
    language: LinearModel
    train_sha256: str


@functools.lru_cache(maxsize=4)
def load_models(path: Path = ARTIFACT_PATH) -> Models:
    """Load (once per path) the artifact written by `agents.intent.train`."""
    data: ArtifactJSON = json.loads(path.read_text(encoding="utf-8"))
    return Models(
        version=data["version"],
        intent=LinearModel.from_json(data["intent"]),
        language=LinearModel.from_json(data["language"]),
        train_sha256=data["train_sha256"],
    )


# --- deterministic opt-out rules ------------------------------------------------------------------

_RULE_TOKEN = re.compile(r"[^\W\d_]+|\d+|🛑")
_OPT_OUT_TWO_WORDS = re.compile(r"\bopt out\b")

# A message made only of these plus filler is an opt-out ("stop pls", "Arrêtez svp", "baja gracias").
_OPT_OUT_WORDS = frozenset(
    {"stop", "🛑", "stopall", "unsubscribe", "unsub", "optout", "revoke", "quit",
     "arret", "arrete", "arretez", "stoppez", "desabonnement", "desinscription",
     "alto", "basta", "baja", "desuscribir", "desuscribirme"}
)
# These mean opt-out only next to a word for messages ("cancel texts"): "cancel please" answers an
# appointment reminder far more often than it revokes consent.
_WEAK_OPT_OUT_WORDS = frozenset({"cancel", "end"})
_MESSAGE_WORDS = frozenset(
    {"text", "texts", "texting", "txt", "txts", "txting", "message", "messages", "messaging", "msg",
     "msgs", "sms", "textos", "texto", "mensajes", "mensaje", "notifications", "alerts", "promos", "pubs",
     "pub", "emails", "calls"}
)
_FILLER = _MESSAGE_WORDS | frozenset(
    {"please", "pls", "plz", "plse", "pleas", "thanks", "thank", "you", "thx", "ty", "now", "it", "all",
     "asap", "already", "just", "ok", "okay", "the", "this", "these", "that", "them", "me", "from",
     "number", "sending", "contacting", "calling", "immediately", "right", "and",
     "merci", "svp", "stp", "sil", "vous", "plait", "bien", "les", "ces", "vos", "de", "aux", "a",
     "gracias", "por", "favor", "porfa", "ya", "los", "las", "todo", "todos", "eso", "esto", "ahora"}
)

# Unmistakable multi-word opt-outs, matched against `_rule_text` (folded, punctuation as spaces).
_OPT_OUT_PHRASES = tuple(
    re.compile(pattern)
    for pattern in (
        # English. The look-behinds keep "don't stop texting me" from counting.
        r"(?<!dont )(?<!don t )(?<!do not )(?<!never )\b(?:stop|quit|cease) (?:texting|txting|messaging"
        r"|sending|contacting|calling|spamming|emailing) (?:me|us|this|these|them|my)\b",
        r"\b(?:remove|delete|erase) (?:me|my (?:phone |cell )?(?:number|#)|this (?:phone |cell )?number)\b"
        r"(?! from (?:the|your) wait ?list)",
        r"\btake (?:me|my (?:phone )?number|this number) off\b",
        r"\b(?:want|like|wish|need) to (?:unsubscribe|optout)\b",
        r"\bopt me out\b",
        r"\b(?:do not|dont|don t|never) (?:text|txt|message|msg|contact|sms|call|email) "
        r"(?:me|this (?:number|phone|#))\b",
        r"\bno more (?:texts|txts|text messages|messages|msgs|sms)\b",
        r"\brevoke (?:my )?consent\b",
        # French (accents folded, apostrophes as spaces: "m'envoyer" -> "m envoyer").
        r"\b(?:arrete[rz]?|cessez|stoppez) (?:de|d) (?:m|me|nous) (?:envoyer|ecrire|contacter|texter"
        r"|harceler|spammer|solliciter|appeler)\b",
        r"\b(?:arrete[rz]?|cessez|stoppez) (?:les|vos|ces) (?:messages|sms|textos|texto|envois|pubs)\b",
        r"\b(?:ne|n) (?:m|me|nous) (?:envoyez|ecrivez|contactez|textez|appelez|sollicitez) plus\b",
        r"\bne plus (?:me |m )?(?:contacter|recevoir|ecrire|envoyer|solliciter)\b",
        r"\bje (?:ne )?(?:veux|souhaite) plus (?:recevoir|etre contacte)\b",
        r"\b(?:retirez|enlevez|supprimez|effacez|otez|desabonnez|desinscrivez) moi\b",
        r"\b(?:supprimez|effacez|retirez|otez) mon numero\b",
        r"\bje (?:veux |souhaite |voudrais )?me (?:desabonner|desinscrire|desabonne|desinscris)\b",
        # Spanish. Negative imperatives ("no me manden") are requests; "no me mandan" is not matched.
        r"\bno me (?:manden|mandes|envien|envies|escriban|escribas|contacten|contactes|molesten|textees)\b",
        r"\bno me vuelvan a (?:escribir|contactar|mandar|enviar|llamar)\b",
        r"\b(?:dejen|deja|dejes|paren) de (?:escribirme|mandarme|enviarme|contactarme|molestarme"
        r"|textearme|llamarme|escribir|mandar|enviar)\b",
        r"\b(?:darme|denme|dame|deme) de baja\b",
        r"\bme (?:quiero|pueden|puede|puedes) dar de baja\b",
        r"\b(?:borr|elimin|sac|saq|quit|retir)\w*me de (?:la|su|sus|tu|esta) lista\b(?! de espera)",
        r"\b(?:borren|eliminen) (?:mi|este) numero\b",
        r"\b(?:ya no|no) (?:quiero|deseo) recibir (?:mas|ningun|nada|sus|mensajes)\b",
        r"\bya no quiero recibir\b",
        r"\bno mas mensajes\b",
        r"^no mas(?: por favor| porfa| gracias)?$",  # "no más" alone is on the FCC's list of examples
        r"\bplus de (?:sms|messages|textos|pubs?)\b",
    )
)
# A clause is a keyword reply of its own: "Not interested. Stop." reads like "STOP".
_CLAUSE = re.compile(r"[.!?;,:\n¡¿…]+")


def _rule_text(text: str) -> list[str]:
    # "opt out" / "opt-out" become one word so that "opt out please" reads like "optout please".
    joined = _OPT_OUT_TWO_WORDS.sub("optout", " ".join(_RULE_TOKEN.findall(fold(text))))
    return joined.split(" ") if joined else []


def _keyword_clause(tokens: Sequence[str]) -> str | None:
    # An opt-out word with nothing but politeness or message words around it.
    rest = [token for token in tokens if token not in _OPT_OUT_WORDS and token not in _WEAK_OPT_OUT_WORDS]
    if not all(token in _FILLER for token in rest):
        return None
    strong = [token for token in tokens if token in _OPT_OUT_WORDS]
    if strong:
        return strong[0]
    weak = [token for token in tokens if token in _WEAK_OPT_OUT_WORDS]
    if weak and any(token in _MESSAGE_WORDS for token in rest):
        return weak[0]
    return None


def opt_out_rule(text: str) -> str | None:
    """The opt-out keyword or phrase that makes `text` an explicit opt-out, if any.

    Covers a clause made of a keyword plus politeness ("STOP PLEASE", "Stop. Thank you", "Not
    interested. Stop.") and the phrasings in `_OPT_OUT_PHRASES`; anything else ("I can stop by
    tomorrow", "cancel please") is left to the model.
    """
    for clause in _CLAUSE.split(text):
        tokens = _rule_text(clause)
        found = _keyword_clause(tokens) if tokens else None
        if found is not None:
            return found
    joined = " ".join(_rule_text(text))
    for pattern in _OPT_OUT_PHRASES:
        match = pattern.search(joined)
        if match:
            return match.group(0)
    return None


# --- the classifier -------------------------------------------------------------------------------


class LocalClassifier:
    """The offline `Classifier`: rules first, then the shipped linear model.

    `implementation` is "rules" when a rule decided (with `keyword` set to the matched keyword or
    phrase) and "local" when the model did. The artifact is loaded at the first classification.
    """

    def __init__(self, artifact: Path = ARTIFACT_PATH) -> None:
        self._artifact = artifact

    @property
    def models(self) -> Models:
        """The loaded artifact (loaded on first access, then shared by every classifier of this path)."""
        return load_models(self._artifact)

    async def classify(self, text: str, context: Sequence[str] = ()) -> Classification:
        """Classify `text`. `context` is accepted for the `Classifier` protocol and ignored: the local
        model reads one message at a time."""
        return self.classify_sync(text)

    def classify_sync(self, text: str) -> Classification:
        """Classify `text` without awaiting anything (typically a fraction of a millisecond).

        Blank text (a media-only WhatsApp message, say) is OTHER, decided by rule.
        """
        models = self.models
        if not text.strip():
            return Classification(Intent.OTHER, 1.0, UNDETERMINED, "rules", models.version)
        found = keywords.match(text)
        if found is not None and found.keyword in _KEYWORD_INTENTS:
            return Classification(
                _KEYWORD_INTENTS[found.keyword], RULES_CONFIDENCE, self.language(text), "rules",
                models.version, keyword=found.word,
            )
        phrase = opt_out_rule(text)
        if phrase is not None:
            return Classification(
                Intent.OPT_OUT, RULES_CONFIDENCE, self.language(text), "rules", models.version, keyword=phrase
            )
        return self.classify_model(text)

    def classify_model(self, text: str) -> Classification:
        """The statistical model's reading alone, skipping every rule.

        For evaluation (how much the model knows without the rules) and for callers that want a second
        opinion on an opt-out. Text with no known feature at all ("🦄", "xqzt") is OTHER, with the
        model's prior probability of OTHER as confidence.
        """
        models = self.models
        folded, words = _intent_words(text)
        rows = models.intent.known_words(words, _intent_word_features, _intent_other_features(folded, words))
        probabilities = models.intent.probabilities(rows)
        if rows:
            best = int(np.argmax(probabilities))
        else:
            best = models.intent.classes.index(Intent.OTHER.value)
        return Classification(
            Intent(models.intent.classes[best]),
            float(min(1.0, max(0.0, probabilities[best]))),
            self.language(text),
            "local",
            models.version,
        )

    def language(self, text: str) -> str:
        """The language of `text`: "en", "fr", "es", or "und" when it has no letters or the model cannot
        tell (typically "ok" or a first name)."""
        if not has_letters(text):
            return UNDETERMINED
        model = self.models.language
        folded, words = _language_words(text)
        rows = model.known_words(words, _language_word_features, _language_other_features(folded, words))
        if not rows:
            return UNDETERMINED
        probabilities = model.probabilities(rows)
        best = int(np.argmax(probabilities))
        return model.classes[best] if probabilities[best] >= _MIN_LANGUAGE_PROBABILITY else UNDETERMINED
