"""Lead enrichment signals read from one inbound message: tone, urgency, a lead score, a name and an email.

Everything here is lexicons and regular expressions, deterministic and offline, fast enough for the
worker's hot path. The lexicons cover English, French and Spanish and are matched whatever language the
classifier reported: short messages often come back "und", and people mix languages. Phrases are matched
token by token on folded text (case, accents and elongation folded: "URGENTTT", "Aujourd’hui" and
"rapidément" all match) with one dictionary look-up per word, so the cost does not grow with the
lexicons; every lexicon entry is written lower-case and without accents.

Tone: each message scores frustrated, friendly and formal cues (words, emoji, emoticons). Emphasis
(three or more "!", a "?!" run, or ALL CAPS shouting) adds one to friendly when friendly cues already
lead, and to frustrated otherwise: "CALL ME BACK!!!" reads as anger, "Thank you!!!" as warmth. A plain
"!!" only amplifies a cue that is already there. Frustrated wins ties (sarcasm: "great, still waiting"),
then formal wins ties with friendly ("Bonjour Madame, merci"): the register is set by the formula.

Urgency: explicit urgency words ("asap", "urgent", "en urgence", "urgente") and emergencies ("leaking",
"fuite", "sin agua caliente", "toothache") make a message high. So do same-day words ("today", "right
now", "tout de suite", "aujourd'hui", "ahora mismo", "hoy"): any message about acting today is high,
"I can stop by today" included, because a same-day window closes if nobody answers quickly. Same-day
words do not count next to a deferral ("busy right now", "later today", "no rush", "plus tard", "más
tarde"), and no cue counts when negated ("not urgent", "pas aujourd'hui", "hoy no"). A complaint is also
high when its tone is frustrated. Otherwise: medium for booking, interested, question and complaint; low
for other and help. Opt-out, opt-in, not-interested and wrong-number messages are always low: the
compliance flow answers them, nobody needs to hurry.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agents import redact
from agents.intent import Classification, Intent
from services import phone


class Tone(StrEnum):
    FRIENDLY = "friendly"
    NEUTRAL = "neutral"
    FORMAL = "formal"
    FRUSTRATED = "frustrated"


class Urgency(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Signals:
    """What one inbound message tells us about the lead."""

    tone: Tone
    urgency: Urgency
    confidence: float  # lead score in [0, 1], see `lead_confidence`
    name: str | None  # as the person stated it, title-cased
    email: str | None  # lower-cased


def extract(text: str, classification: Classification, previous_confidence: float | None = None) -> Signals:
    """All signals of `text` (pass "" for a media-only message), given how it was classified."""
    text = text or ""
    folded = _fold(text)
    tokens, hits = _read(folded)
    message_tone = _tone(text, folded, hits)
    return Signals(
        tone=message_tone,
        urgency=_urgency(classification.intent, tokens, hits, lambda: message_tone),
        confidence=lead_confidence(classification.intent, classification.confidence, previous_confidence),
        name=stated_name(text),
        email=stated_email(text),
    )


# --- reading a message ----------------------------------------------------------------------------

_COMBINING_MARKS = re.compile("[\u0300-\u036f]")
# "yesss" -> "yes", "urgentttt" -> "urgent": elongation carries emphasis, not meaning. Letters are
# ASCII by then (accents are gone), and an ASCII class lets `re` skip ahead instead of trying every offset.
_ELONGATION = re.compile(r"([a-z])\1\1+")
# Words, and the punctuation that ends a clause. Apostrophes split ("can't" -> "can t", "d'urgence" ->
# "d urgence"), so French elisions never hide the word behind them.
_TOKEN = re.compile(r"[^\W_]+|[,.;:!?¡¿\n]")
_CLAUSE_BREAKS = frozenset(",.;:!?¡¿\n")


def _fold(text: str) -> str:
    """Case-, width-, accent- and elongation-folded `text` ("Rapidément!!" -> "rapidement!!")."""
    text = _COMBINING_MARKS.sub("", unicodedata.normalize("NFKD", text).casefold())
    return _ELONGATION.sub(r"\1", text)


class _Cue(StrEnum):
    FRUSTRATED = "frustrated"
    FRIENDLY = "friendly"
    FORMAL = "formal"
    REFUSAL = "refusal"  # "no thanks": polite, not warm; consumes the "thanks"
    URGENT = "urgent"  # explicit urgency or an emergency
    SAME_DAY = "same_day"
    DEFERRAL = "deferral"


# Phrases in shell-like brace notation ("annoy{ed|ing}", "{no one|nobody} called"), written folded.
_PHRASES: dict[_Cue, tuple[str, ...]] = {
    _Cue.FRUSTRATED: (
        # en
        "ridiculous", "unacceptable", "terrible", "horrible", "awful", "worst", "pathetic", "useless",
        "incompetent", "unprofessional", "outrageous", "angry", "furious", "pissed", "pissed off",
        "annoy{ed|ing}", "frustrat{ed|ing}", "fed up", "sick and tired", "sick of", "wtf", "wth", "ffs",
        "bullshit", "crap", "what the {hell|heck|fuck}", "scam", "scammer{|s}", "rip off", "ripoff", "rude",
        "disappoint{ed|ing}", "disgust{ed|ing}", "still waiting", "still nothing",
        "still no {one|answer|reply|call|callback|response|word|news|show}",
        "{no one|noone|nobody} {called|came|showed|answered|answers|responded|replied|got back}",
        "{no one|noone|nobody} {calls back|fixes|helps|is helping}",
        "never {called|came|showed|showed up|answered|responded|replied|got back}", "nightmare", "shady",
        "upset", "unhappy", "smh", "not cool", "{a|absolute} joke", "mediocre", "wasted", "for nothing",
        "never again", "bad {experience|review}", "how many times",
        "{second|third|3rd|fourth|4th} time", "waste of {|my }{time|money}", "thanks for nothing",
        "not {happy|satisfied|ok|okay|acceptable|impressed|great|good enough}",
        "are you {kidding|serious}", "you people",
        # fr
        "ridicule", "inadmissible", "inacceptable", "honteux", "honte", "scandal{e|eux|euse}", "nul", "nulle",
        "lamentable", "pitoyable", "deplorable", "incompetent{|s|e|es}", "enerv{e|ee|ant|ante}",
        "agac{e|ee|ant|ante}", "furieu{x|se}", "en colere", "marre", "ras le bol",
        "toujours {rien|aucun|aucune|personne}", "toujours pas de", "personne {n'est|ne m'a|n'a|ne repond}",
        "jamais {eu|rappele|venu|repondu}", "n'importe quoi", "c'est une blague", "arnaque",
        "escroc{|s|erie}", "decu{|e|s|es}", "decevant{|e}", "le pire", "c'est pire",
        "pas {content|contente|satisfait|satisfaite}", "perte de temps", "se fout", "foutez", "merde", "putain",
        "desagreable", "mecontent{|e|s|es}", "impoli{|e|s|es}", "c'est du vol", "plus jamais",
        "je ne reviendrai pas", "peu professionnel{|le}", "mauvaise experience", "mauvais avis", "pour rien",
        "attends toujours", "personne ne rappelle",
        # es
        "ridicul{o|a}", "inaceptable", "inadmisible", "vergonzos{o|a}", "verguenza", "pesim{o|a}", "fatal",
        "hart{o|a|os|as}", "{estoy|muy} molest{o|a}", "enojad{o|a}", "enfadad{o|a}", "furios{o|a}", "indignad{o|a}",
        "decepcion", "decepcionad{o|a}", "estafa", "{todavia|aun} {nada|nadie|sin}",
        "{todavia|aun} no {llega|llegan|llego|viene|vienen|contestan|me llaman|me han}",
        "nadie {|me }{llamo|vino|contesto|respondio|contesta|ayuda|regresa|devuelve}", "nadie viene",
        "nunca {|me }{llamaron|vinieron|contestaron}", "groser{o|a|os|as}", "inconforme", "abuso", "coraje",
        "nunca mas", "no vuelvo", "poco profesional", "mala {experiencia|resena}", "sigo esperando",
        "mal servicio", "perdida de tiempo", "no estoy {content|satisfech}{o|a}", "es el colmo", "una burla",
        "maldit{o|a}", "mierda", "carajo", "no puede ser",
    ),
    _Cue.FRIENDLY: (
        # en
        "thank{|s}", "thank {you|u}", "thx", "thnx", "thanx", "tks", "ty", "tysm", "tyvm", "much appreciated",
        "appreciate{|d}", "awesome", "great", "perfect", "amazing", "wonderful", "lovely", "excellent",
        "fantastic", "brilliant", "sounds {good|great|perfect}", "cool", "nice", "sweet", "yay", "woohoo",
        "can{'|}t wait", "looking forward", "have a {good|great|nice|lovely} {day|one|evening|weekend}",
        "you{'|}re {the best|awesome|amazing}", "lol", "haha", "hahaha", "hahahaha", "glad", "happy to",
        "no problem", "no worries", "np", "cheers", "love {it|that|this|you}", "absolutely", "definitely",
        "happy {holidays|new year|thanksgiving|easter|birthday|4th}", "merry {christmas|xmas}", "good luck",
        "you too", "same to you",
        # fr
        "merci", "mrc", "mci", "super", "genial{|e}", "parfait{|e}", "excellent{|e}", "formidable",
        "trop {bien|cool|top}", "avec plaisir", "bonne {journee|soiree|fin de journee|semaine}", "bisous",
        "bises", "j'adore", "chouette", "nickel", "impec{|cable}", "mdr", "ptdr", "hate", "a bientot",
        "{tres|c'est} gentil", "ravi{|e}", "bien sur", "bonnes {fetes|vacances}", "joyeux noel",
        "bonne annee",
        # es
        "gracias", "grax", "grcs", "genial", "perfect{o|a}", "excelente", "buenisim{o|a}", "chevere",
        "que bueno", "me encanta", "encantad{o|a}", "muy amable", "con gusto", "de nada", "estupend{o|a}",
        "maravillos{o|a}", "fenomenal", "jaja", "jajaja", "jajajaja", "jeje", "jejeje", "buen dia",
        "igualmente", "por supuesto", "claro que si", "felices fiestas", "feliz {navidad|ano nuevo|dia}",
    ),
    _Cue.REFUSAL: (
        "{no|nope|nah|non}{|,} {thanks|thank you|thank u|thx|merci|gracias}",
        "non {|,}merci beaucoup", "no{|,} {muchas gracias|thank you very much}",
    ),
    _Cue.FORMAL: (
        # en ("Dear" opening a message is matched separately: mid-message it is an endearment.)
        "kind regards", "best regards", "warm regards", "regards", "sincerely", "yours {truly|faithfully}",
        "respectfully", "to whom it may concern", "i would like to {inquire|enquire|request}", "i am writing",
        "please advise", "i would {appreciate|be grateful}", "at your {|earliest }convenience",
        "would it be possible", "kindly", "good {morning|afternoon|evening}", "mr", "mrs", "ms", "sir", "madam",
        "thank you for your {time|assistance|attention|consideration}", "i look forward to",
        # fr
        "madame", "monsieur", "mme", "cordialement", "bien cordialement", "salutations", "veuillez",
        "je vous prie", "je me permets", "je souhaiterais", "auriez vous", "pourriez vous",
        "serait il possible", "bien a vous", "respectueusement", "dans l'attente", "vous remerciant",
        "je vous remercie",
        # es
        "estimad{o|a|os|as}", "atentamente", "cordialmente", "cordial saludo", "un cordial saludo",
        "saludos cordiales", "reciba un saludo", "le saluda", "quisiera", "usted", "senor", "senora", "sr",
        "sra", "le agradeceria", "seria tan amable", "de antemano", "a la espera", "disculpe",
    ),
    _Cue.URGENT: (
        # en
        "urgent", "urgently", "urgnt", "urgency", "emergency", "emergencies", "emergancy", "asap",
        "a.s.a.p", "as soon as {possible|you can}", "immediately", "immediatly",
        "leak{|s|ing|ed}", "flood{|ed|ing}", "burst pipe{|s}", "pipe burst", "no {heat|heating|hot water|power}",
        "smell{|s} {|of }gas", "gas {leak|smell}", "sparking", "bleeding", "toothache", "tooth ache",
        "{severe|bad|lots of|so much|in} pain", "swollen", "swelling", "locked out", "overflowing", "sewage",
        # fr
        "urgence", "urgemment", "d'urgence", "urgent{|e|s|es}", "immediatement", "des que possible",
        "au plus {vite|tot}", "le plus {vite|rapidement|tot} possible",
        "fuite", "fuit", "inond{e|ee|ation}", "degat des eaux", "plus {de chauffage|d'eau chaude|d'electricite}",
        "odeur de gaz", "saigne", "j'ai {tres|trop|super} mal", "rage de dent{|s}", "douleur", "abces",
        "gonfle{|e}",
        # es
        "urjente", "urgencia", "emergencia", "inmediatamente", "de inmediato", "cuanto antes",
        "lo {antes|mas pronto|mas rapido} posible",
        "fuga", "gotera", "inundad{o|a}", "inundacion", "sin {agua caliente|calefaccion|luz}",
        "no {tengo|hay} agua", "olor a gas", "sangra", "sangrando", "me duele", "{mucho|fuerte} dolor",
        "dolor {fuerte|muy fuerte}", "dolor de {muela|muelas|diente|dientes}", "hinchad{o|a}",
    ),
    _Cue.SAME_DAY: (
        # en
        "today", "2day", "tonight", "tonite", "2nite", "this {morning|afternoon|evening}", "right {now|away}",
        "straight away", "call me now", "same day",
        # fr
        "aujourd'hui", "aujourdhui", "auj", "ce {soir|matin}", "cet apres midi", "tout de suite",
        "tt de suite", "des maintenant",
        # es
        "hoy", "hoy mismo", "esta {noche|tarde|manana}", "ahora mismo", "ya mismo",
    ),
    _Cue.DEFERRAL: (
        # en
        "later", "busy", "at work", "driving", "in a meeting", "can{'|}t talk", "no rush", "no hurry",
        "not in a hurry", "whenever", "no pressure",
        # fr
        "plus tard", "occupe{|e}", "au travail", "en reunion", "au volant", "pas presse{|e}", "rien ne presse",
        "quand vous {pouvez|voulez}",
        # es
        "mas tarde", "ocupad{o|a}", "en el trabajo", "manejando", "conduciendo", "sin prisa", "no hay prisa",
        "sin apuro", "no hay apuro", "cuando {pueda|puedas|puedan}",
    ),
}
_BRACES = re.compile(r"\{([^{}]*)\}")


def _expand(pattern: str) -> list[str]:
    """"annoy{ed|ing}" -> ["annoyed", "annoying"]; "{|my }time" -> ["time", "my time"]."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [phrase for option in match.group(1).split("|") for phrase in _expand(head + option + tail)]


def _build_lexicon() -> tuple[dict[str, _Cue], dict[str, int]]:
    """Phrase (tokens joined by spaces) -> cue, and first token -> the most tokens a phrase from it has."""
    lexicon: dict[str, _Cue] = {}
    longest: dict[str, int] = {}
    for cue, patterns in _PHRASES.items():
        for phrase in (phrase for pattern in patterns for phrase in _expand(pattern)):
            tokens = _TOKEN.findall(_fold(phrase))
            key = " ".join(tokens)
            if lexicon.setdefault(key, cue) is not cue:
                raise ValueError(f"{phrase!r} is both a {lexicon[key]} and a {cue} cue")
            longest[tokens[0]] = max(longest.get(tokens[0], 0), len(tokens))
    return lexicon, longest


_LEXICON, _LONGEST = _build_lexicon()


@dataclass(frozen=True, slots=True)
class _Hit:
    cue: _Cue
    start: int  # token span
    end: int


def _read(folded: str) -> tuple[list[str], list[_Hit]]:
    """The tokens of `folded` and the lexicon phrases in them, longest first, without overlaps."""
    tokens = _TOKEN.findall(folded)
    hits = []
    n = len(tokens)
    free = 0  # tokens before this one belong to a phrase already found
    for i in [i for i, token in enumerate(tokens) if token in _LONGEST]:
        if i < free:
            continue
        for size in range(min(_LONGEST[tokens[i]], n - i), 0, -1):
            cue = _LEXICON.get(tokens[i] if size == 1 else " ".join(tokens[i : i + size]))
            if cue is not None:
                hits.append(_Hit(cue, i, i + size))
                free = i + size
                break
    return tokens, hits


# --- tone -----------------------------------------------------------------------------------------

_DEAR = re.compile(r"(?:\A|\n)\W*dear\b")
_ANGRY_EMOJI = re.compile("[😡🤬😠😤💢🙄👎😒🖕]")
_HAPPY_EMOJI = re.compile("[😊🙂😀😃😄😁😆😉🙏👍👌❤💕💖💗💙💛💚😍🥰🤗🎉🙌☺😘✨🥳👏💯😇🔥😎]")
# Emoticons count only standing alone between spaces ("10:30)" is not a smile).
_HAPPY_EMOTICONS = frozenset(
    ":) :-) :)) ;) ;-) =) :] :D :-D ;D :p :P :-p :-P <3 ^^ ^_^".split()
)
_ANGRY_EMOTICONS = frozenset(">:( >:-( :@ -_- >_<".split())
_EMOTICON_CHARS = frozenset(":;=<>^_")
_CAPS_PAIR = re.compile(r"[A-ZÀ-ÖØ-Þ]{2}")
_LETTER_WORD = re.compile(r"[^\W\d_]+")


def tone(text: str) -> Tone:
    """The register and mood of one message: friendly, neutral, formal or frustrated (module docstring)."""
    folded = _fold(text)
    return _tone(text, folded, _read(folded)[1])


def _tone(text: str, folded: str, hits: list[_Hit]) -> Tone:
    frustrated = friendly = formal = 0
    for hit in hits:
        if hit.cue is _Cue.FRUSTRATED:
            frustrated += 1
        elif hit.cue is _Cue.FRIENDLY:
            friendly += 1
        elif hit.cue is _Cue.FORMAL:
            formal += 1
    if _DEAR.search(folded):
        formal += 1
    if not text.isascii():
        frustrated += 2 * len(_ANGRY_EMOJI.findall(text))  # 😡 alone says it all
        friendly += len(_HAPPY_EMOJI.findall(text))
    if not _EMOTICON_CHARS.isdisjoint(text):
        for chunk in text.split():
            if chunk in _HAPPY_EMOTICONS:
                friendly += 1
            elif chunk in _ANGRY_EMOTICONS:
                frustrated += 1
    if "!!!" in text or "?!" in text or "!?" in text or _shouting(text):
        if friendly > frustrated:
            friendly += 1
        else:
            frustrated += 1
    elif "!!" in text:
        if friendly > frustrated:
            friendly += 1
        elif frustrated:
            frustrated += 1
    if frustrated and frustrated >= friendly:
        return Tone.FRUSTRATED
    if formal and formal >= friendly:
        return Tone.FORMAL
    if friendly:
        return Tone.FRIENDLY
    return Tone.NEUTRAL


def _shouting(text: str) -> bool:
    if not _CAPS_PAIR.search(text):
        return False
    # Acronyms ("HVAC quote ASAP") are capitals too; shouting is most of the message, several words.
    words = _LETTER_WORD.findall(text)
    caps = [word for word in words if len(word) >= 2 and word.isupper()]
    caps_letters = sum(map(len, caps))
    return len(caps) >= 2 and caps_letters >= 8 and caps_letters >= 0.7 * sum(map(len, words))


# --- urgency --------------------------------------------------------------------------------------

# "t" is what is left of "n't" once the apostrophe splits it ("isn't urgent" -> "isn t urgent").
_NEGATORS = frozenset(
    "not no never nothing t isnt aint dont doesnt cant cannot wont without"
    " pas rien jamais sans ni nada nunca sin tampoco".split()
)
_NEGATION_REACH = 3
_NEGATORS_AFTER = frozenset({"no", "pas", "non"})  # "hoy no", "aujourd'hui pas possible"
_NEVER_URGENT = frozenset({Intent.OPT_OUT, Intent.OPT_IN, Intent.NOT_INTERESTED, Intent.WRONG_NUMBER})
_BASELINE = {
    Intent.BOOKING: Urgency.MEDIUM,
    Intent.INTERESTED: Urgency.MEDIUM,
    Intent.QUESTION: Urgency.MEDIUM,
    Intent.COMPLAINT: Urgency.MEDIUM,
}


def urgency(text: str, intent: Intent) -> Urgency:
    """How soon the business should answer this message (rules in the module docstring)."""
    if intent in _NEVER_URGENT:
        return Urgency.LOW
    folded = _fold(text)
    tokens, hits = _read(folded)
    return _urgency(intent, tokens, hits, lambda: _tone(text, folded, hits))


def _urgency(intent: Intent, tokens: list[str], hits: list[_Hit], message_tone: Callable[[], Tone]) -> Urgency:
    if intent in _NEVER_URGENT:
        return Urgency.LOW
    same_day = deferred = False
    for hit in hits:
        if hit.cue is _Cue.URGENT and not _negated(tokens, hit):
            return Urgency.HIGH
        if hit.cue is _Cue.SAME_DAY and not _negated(tokens, hit):
            same_day = True
        elif hit.cue is _Cue.DEFERRAL:
            deferred = True
    if same_day and not deferred:
        return Urgency.HIGH
    if intent is Intent.COMPLAINT and message_tone() is Tone.FRUSTRATED:
        return Urgency.HIGH
    return _BASELINE.get(intent, Urgency.LOW)


def _negated(tokens: list[str], hit: _Hit) -> bool:
    # Up to three words before the cue, within its clause: "not urgent", "no es urgente", "rien d'urgent",
    # "don't need it today".
    for token in reversed(tokens[max(0, hit.start - _NEGATION_REACH) : hit.start]):
        if token in _CLAUSE_BREAKS:
            break
        if token in _NEGATORS:
            return True
    return hit.end < len(tokens) and tokens[hit.end] in _NEGATORS_AFTER


# --- lead confidence ------------------------------------------------------------------------------

SMOOTHING = 0.5  # weight of the newest message in the moving average
_NEUTRAL = 0.5
_INTENT_SCORE = {
    Intent.BOOKING: 0.95,
    Intent.INTERESTED: 0.9,
    Intent.QUESTION: 0.65,
    Intent.OPT_IN: 0.6,
    Intent.OTHER: 0.5,
    Intent.HELP: 0.5,
    Intent.COMPLAINT: 0.2,
    Intent.NOT_INTERESTED: 0.1,
    Intent.WRONG_NUMBER: 0.0,
    Intent.OPT_OUT: 0.0,
}


def lead_confidence(intent: Intent, classification_confidence: float, previous: float | None) -> float:
    """How likely the lead is qualified and engaged, in [0, 1], rounded to 2 decimals.

    With s the intent's score (booking 0.95, interested 0.9, question 0.65, opt-in 0.6, other and help
    0.5, complaint 0.2, not-interested 0.1, wrong-number and opt-out 0), c the classifier's confidence
    and p the previous value:

        observed = 0.5 + c * (s - 0.5)          # an unsure classification says little: stay near 0.5
        score    = observed                      if p is None
                   0.5 * observed + 0.5 * p      otherwise (exponential moving average, α = 0.5)

    Out-of-range or NaN inputs are clamped (NaN confidence counts as 0, a NaN previous as None).
    """
    c = _clamp(classification_confidence, 0.0)
    observed = _NEUTRAL + c * (_INTENT_SCORE.get(intent, _NEUTRAL) - _NEUTRAL)
    if previous is not None and not math.isnan(previous):
        observed = SMOOTHING * observed + (1 - SMOOTHING) * _clamp(previous, _NEUTRAL)
    return round(_clamp(observed, _NEUTRAL), 2)


def _clamp(value: float, if_nan: float) -> float:
    if math.isnan(value):
        return if_nan
    return min(1.0, max(0.0, value))


# --- stated name and email ------------------------------------------------------------------------

# "my name is ..." is unambiguous: the name may be written in lower case. The short triggers ("I'm",
# "this is", "soy") are followed by a name only when the word is capitalised.
_STRONG_TRIGGER = r"my\s+name\s+is|my\s+name's|je\s+m'\s*appelle|mon\s+nom\s+(?:est|c'est)|me\s+llamo|mi\s+nombre\s+es"
_WEAK_TRIGGER = r"this\s+is|i\s*'?\s*m|i\s+am|it\s*'?\s*s|je\s+suis|moi\s*,?\s+c'est|ici|soy|habla"
_TRIGGER = re.compile(rf"\b(?:(?P<strong>{_STRONG_TRIGGER})|(?P<weak>{_WEAK_TRIGGER}))[ \t]+")
_TRIGGER_ANY_CASE = re.compile(_TRIGGER.pattern, re.IGNORECASE)
# "C'est Marie ici", "c'est Marie à l'appareil".
_CEST_ICI = re.compile(r"\bc'est[ \t]+(?P<name>[^\W\d_][^\n]{0,60}?)[ \t]+(?:ici|[àa] l'appareil)\b", re.IGNORECASE)
_DENIAL = re.compile(r"(?:^|\W)no[ \t]+$", re.IGNORECASE)
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*")
_NAME_GAP = re.compile(r"[ \t]+")
_TITLE = re.compile(
    r"(?:dr|mr|mrs|ms|miss|mme|mlle|m|sr|sra|srta|dra|doctor|docteur)\.?[ \t]+", re.IGNORECASE
)
_MAX_NAME_WORDS = 3
# Words that follow "I'm", "this is", "soy"... and are not names, folded. Capitalisation does most of the
# filtering; this catches Title Case Typers ("I'm Interested") and all-caps messages.
_NOT_NAMES = frozenset(
    """
    a an the and or but not no yes so very really just also still only too here there now today tomorrow
    tonight back home out in on at from with for to of by about over away outside sorry glad happy sure
    fine good great ok okay okey interested available free busy ready done new old late early curious
    confused retired married single pregnant allergic afraid scared worried tired sick lost calling texting
    writing looking trying wondering thinking going coming hoping asking following reaching me him her them
    it this that these those your you yours my mine his hers their our we they he she i im was is are be
    been being have has had do does did will would could should can may might must shall please call text
    need want like hello hi hey thanks thank yes yeah yep nope nah well currently actually definitely
    probably maybe almost always never right wrong correct regarding re fyi interested unsure certain
    unable able gonna kinda going mom mum dad wife husband son daughter mother father owner manager tenant
    landlord neighbor neighbour friend customer client patient student nurse doctor teacher realtor agent
    parent guardian someone somebody nobody everyone calling who what when where why how which
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july
    august september october november december english french spanish american canadian mexican british
    urgent important serious kidding joking test testing
    moi toi lui elle nous vous le la les un une de du des en au aux bien pas tres trop super parfait interesse
    interessee dispo disponible occupe occupee libre pret prete la-bas demain ce cette et ou mais donc car
    pour avec sans chez sur dans encore aussi deja juste vraiment merci bonjour bonsoir salut madame
    monsieur nouveau nouvelle cliente patiente francais francaise possible urgent pareil desole desolee
    lundi mardi mercredi jeudi vendredi samedi dimanche janvier fevrier mars avril mai juin juillet aout
    septembre octobre novembre decembre
    yo el los las una del muy mal nueva su tu mi casado casada soltero soltera alergico alergica
    interesado interesada mexicano mexicana colombiano colombiana espanol espanola americano americana
    argentino argentina cubano cubana venezolano venezolana peruano peruana chileno chilena dominicano
    dominicana ingles frances estudiante madre padre mama papa dueno duena vecino vecina esposo esposa
    hijo hija hermano hermana amigo amiga quiero necesito tengo busco queria gracias hola buenas buenos
    ayer hoy manana ahora aqui alla lunes martes miercoles jueves viernes sabado domingo enero febrero
    marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre yo-misma yo-mismo
    """.split()
)

_BUSINESS_WORDS = frozenset(
    """
    dental dentist dentistry orthodontics plumbing plumbers heating hvac electric roofing salon spa
    barbers beauty realty properties homes clinic office company services inc llc ltd team group
    cabinet clinique plomberie salon inmobiliaria clinica consultorio plomeria
    """.split()
)


def stated_name(text: str) -> str | None:
    """The name the person gives for themselves ("my name is ana ruiz" -> "Ana Ruiz"), if they state one.

    At most three words, title-cased unless written in mixed case ("McDonald" stays). Particles end a
    name ("María de la Cruz" -> "María"); a possessive is not a self-introduction ("this is Sarah's mom").
    """
    if not text:
        return None
    text = text.replace("’", "'").replace("ʼ", "'")
    lowered = text.lower()
    # Case-insensitive alternations are slow in `re`; the lower-cased copy gives the same offsets unless
    # lower-casing changed its length ("İ" -> "i̇"), which is rare enough to take the slow path.
    triggers = _TRIGGER.finditer(lowered) if len(lowered) == len(text) else _TRIGGER_ANY_CASE.finditer(text)
    for trigger in triggers:
        if _DENIAL.search(text, max(0, trigger.start() - 4), trigger.start()):
            continue  # "No soy Carlos", "no me llamo Daniela": the opposite of an introduction
        name = _read_name(text, trigger.end(), strict=trigger.group("weak") is not None)
        if name:
            return name
    if "c'est" not in lowered:
        return None
    for match in _CEST_ICI.finditer(text):
        name = _read_name(match.group("name") + " ", 0, strict=True, whole=True)
        if name:
            return name
    return None


def _read_name(text: str, pos: int, strict: bool, whole: bool = False) -> str | None:
    title = _TITLE.match(text, pos)
    if title:
        pos = title.end()
    words: list[str] = []
    while len(words) < _MAX_NAME_WORDS:
        match = _NAME_WORD.match(text, pos)
        if match is None:
            break
        word = match.group()
        if word.casefold().endswith("'s"):
            return None
        # The first word sets the case: after "my name is Sarah", "and" is not part of the name.
        must_be_capitalised = words[0][0].isupper() if words else strict
        if must_be_capitalised and not word[0].isupper():
            break
        if not _is_name_word(word):
            if word[0].isupper() and _fold(word) in _BUSINESS_WORDS:
                return None  # "this is Bright Plumbing": a business introducing itself
            break
        words.append(word)
        pos = match.end()
        gap = _NAME_GAP.match(text, pos)
        if gap is None:
            break
        pos = gap.end()
    if not words or (whole and pos < len(text)):
        return None
    return " ".join(word if _mixed_case(word) else word.title() for word in words)


def _is_name_word(word: str) -> bool:
    if not 2 <= len(word) <= 24:
        return False
    folded = _fold(word)
    if folded in _NOT_NAMES or (folded in _LEXICON and len(folded) > 2):  # "This is Ridiculous"; "Ty" is a name
        return False
    return not (len(folded) > 5 and folded.endswith("ing"))  # "I'm Calling about..."


def _mixed_case(word: str) -> bool:
    return not (word.islower() or word.isupper())


def stated_email(text: str) -> str | None:
    """The first plausible email address in `text`, lower-cased."""
    if not text or "@" not in text:
        return None
    match = redact.EMAIL.search(text)
    return match.group().lower() if match else None


# --- test numbers ---------------------------------------------------------------------------------

_TEST_NUMBER = re.compile(
    r"\+1[2-9]\d{2}55501\d{2}"  # NANP 555-0100..0199, reserved for fiction in every area code
    r"|\+15005550\d{3}"  # Twilio's magic test numbers
    # Ofcom's numbers for drama: mobile, 01632, London, the "496" and "498" city blocks, Cardiff, Belfast,
    # freephone, premium rate, UK-wide.
    r"|\+44(?:7700900|1632960|2079460|11[3-8]4960|1214960|1314960|1414960|1514960|1614960|1914980"
    r"|2920180|2890180|8081570|9098790|3069990)\d{3}"
)

_E164 = re.compile(r"\+\d{8,15}")


def is_test_number(e164: str | None) -> bool:
    """Whether `e164` is reserved for fiction or testing (never a real lead)."""
    if not e164:
        return False
    number = e164.strip()
    if not _E164.fullmatch(number):
        number = phone.to_e164(number) or ""
    return _TEST_NUMBER.fullmatch(number) is not None
