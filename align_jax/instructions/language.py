"""A small offline language detector for ``language:response_language`` and the English checks.

IFEval calls ``langdetect`` (a trained n-gram model). We run offline with no data files, so
detection works in two steps:

1. **Script.** Count the characters of each Unicode script. A script used by one language in
   our table (Hangul, Thai, Tamil, ...) decides the language outright.
2. **Stop words.** A script shared by several languages (Latin, Cyrillic, Arabic,
   Devanagari, CJK) is resolved by stop-word profiles plus a few marker characters
   (Vietnamese tone marks, Russian ``ы``, Urdu ``ے``, Marathi ``ळ``, ...).

   Evidence for a language: each occurrence of one of its stop words counts 1/k, where k is
   the number of the script's languages that list that word ("la" is French, Spanish,
   Italian and Swahili, so it gives each 1/4), and each occurrence of one of its marker
   characters counts 1/2. The language with the most evidence wins; equal evidence goes
   to the one with more distinct stop words and markers in the text. So a word that
   several languages share no longer decides for the first of them: "Sono in Italia." is
   Italian ("in" is English and Italian, "sono" only Italian). Only an exact tie on both
   goes to the table order, which puts the likelier answer first (English for Latin
   script): "it is miguel de cervantes." ties English ("it", "is") with Dutch ("is",
   "de") and stays English.

It covers every code in IFEval's ``input_data.jsonl`` (ar bg bn de fa fi gu hi it kn ko mr
ne pa pt ru sw ta te th ur vi) plus English and a few neighbours that a model might answer
in by mistake (es fr nl zh ja el he ml). Latin-script text with no stop-word evidence (e.g.
"HELLO WORLD") is reported as English, the first candidate of its script. It is a coarse
detector meant for whole responses, not for single words.
"""

from __future__ import annotations

import bisect
import collections
import re
from fractions import Fraction

# (first code point, last code point, script name); sorted by first code point.
_SCRIPT_RANGES = sorted(
    [
        (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00C0, 0x024F, "latin"),
        (0x1E00, 0x1EFF, "latin"),
        (0x0370, 0x03FF, "greek"),
        (0x0400, 0x04FF, "cyrillic"),
        (0x0590, 0x05FF, "hebrew"),
        (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0xFB50, 0xFDFF, "arabic"),
        (0xFE70, 0xFEFF, "arabic"),
        (0x0900, 0x097F, "devanagari"),
        (0x0980, 0x09FF, "bengali"),
        (0x0A00, 0x0A7F, "gurmukhi"),
        (0x0A80, 0x0AFF, "gujarati"),
        (0x0B80, 0x0BFF, "tamil"),
        (0x0C00, 0x0C7F, "telugu"),
        (0x0C80, 0x0CFF, "kannada"),
        (0x0D00, 0x0D7F, "malayalam"),
        (0x0E00, 0x0E7F, "thai"),
        (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xAC00, 0xD7AF, "hangul"),
        (0x3040, 0x30FF, "kana"),
        (0x4E00, 0x9FFF, "han"),
    ]
)
_RANGE_STARTS = [r[0] for r in _SCRIPT_RANGES]

_SINGLE_LANGUAGE_SCRIPTS = {
    "greek": "el", "hebrew": "he", "bengali": "bn", "gurmukhi": "pa", "gujarati": "gu",
    "tamil": "ta", "telugu": "te", "kannada": "kn", "malayalam": "ml", "thai": "th",
    "hangul": "ko",
}


def _profile(stop_words: str, markers: str = "") -> tuple[frozenset[str], str]:
    return frozenset(stop_words.split()), markers


# script -> {language: (stop words, marker characters)}; the first language is the default.
_PROFILES: dict[str, dict[str, tuple[frozenset[str], str]]] = {
    "latin": {
        "en": _profile(
            "the and is are of to in that it for you with this on be as was have not "
            "they we he she at by from or an will can your has their which would there "
            "i my what do does did how who when where why if so but all any some more "
            "just about into than then them his her its our out up also very like been "
            "were had should could must"
        ),
        "de": _profile(
            "der die das und ist nicht ich zu den mit es ein eine sich auch auf für von "
            "dem sie im werden wir wird sind oder aber wie bei nach noch ihre kann",
            "äöüß",
        ),
        "fr": _profile(
            "le la les et est un une des du que qui dans pour pas sur ce il avec sont "
            "vous nous au aux mais ou par plus elle cette être",
            "àèêùûœç",
        ),
        "es": _profile(
            "el la los las y en es un una por con para no del se más pero también está "
            "que como su al lo muy son hay sus este esta",
            "ñ¿¡",
        ),
        "pt": _profile(
            "o os as do da dos das em um uma para com não é no na se mais por são "
            "também você que como mas ao seu sua muito isso está",
            "ãõç",
        ),
        "it": _profile(
            "il di che è un una per non sono con del della gli le anche questo come più "
            "ma nel alla delle dei lo si essere molto questa e la in al ci ha ho hai hanno "
            "fare quando perché dove nella nei negli nelle allo ai agli dal dalla dai mi ti "
            "sul sulla sui col tra fra io tu lui lei noi voi loro mio mia miei mie tuo tua "
            "suo sua nostro nostra cosa tutto tutti sempre ancora già poi però senza "
            "questi queste quello quella quelli era erano sei siamo siete stato stata ne",
            "àèìòù",
        ),
        "nl": _profile(
            "de het een en van is dat niet ik op te zijn met voor maar ook er aan bij "
            "worden wordt deze naar hun"
        ),
        "fi": _profile(
            "ja on ei se että oli ovat mutta kuin tai myös ole hän tämä joka niin kun "
            "mitä voi sen ne olla hyvin jos kanssa sekä",
            "äö",
        ),
        "sw": _profile(
            "na ya wa kwa ni za la katika kuwa hii cha yake pia lakini sana watu hiyo "
            "kama au ili huo hilo wake vya zaidi hivyo"
        ),
        "vi": _profile(
            "và của là có không được các những trong cho một người này với để đã khi "
            "cũng như từ sẽ rất bạn",
            "ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ",
        ),
    },
    "cyrillic": {
        "ru": _profile(
            "и в не на что я с он как это по но из у к все так же от она мы вы бы было "
            "его ее который для или если уже только также очень может",
            "ыэё",
        ),
        "bg": _profile(
            "и в на е да се за от не са това че с по като които към но ще има той тя те "
            "ние вие беше или също много може",
            "ъѝ",
        ),
    },
    "arabic": {
        "ar": _profile(
            "في من على إلى أن هذا هذه التي الذي عن مع كان ما لا هو هي قد كل بين ذلك أو ثم",
            "ةىيك",
        ),
        "fa": _profile(
            "و در به از که این را با است آن برای می یک تا هم بر شود نیز ما شده",
            "یکپچگژ",
        ),
        "ur": _profile(
            "ہے کے کی میں اور سے کو کا نے یہ ہیں پر بھی ایک تھا وہ جو کہ",
            "ٹڈڑںےہھ",
        ),
    },
    "devanagari": {
        "hi": _profile(
            "है हैं और का की के में से को यह नहीं पर भी था थे थी कि हो जो इस तो लिए कर "
            "किया गया साथ अपने वह"
        ),
        "mr": _profile(
            "आहे आहेत आणि हे ही हा या ते त्या मध्ये नाही होते होता करून केले व पण तर "
            "म्हणून सर्व आपल्या त्यांच्या तो",
            "ळ",
        ),
        "ne": _profile(
            "छ छन् र पनि यो त्यो मा गर्न गरेको भएको लागि हुन्छ थियो छैन तथा गर्छ सक्छ यस "
            "उनी"
        ),
    },
}

LANGUAGES: tuple[str, ...] = tuple(
    sorted(
        {lang for profiles in _PROFILES.values() for lang in profiles}
        | set(_SINGLE_LANGUAGE_SCRIPTS.values())
        | {"zh", "ja"}
    )
)

_MARKER_WEIGHT = Fraction(1, 2)  # a marker character counts half a stop word

# script -> {stop word: number of the script's languages that list it}
_SHARES: dict[str, collections.Counter[str]] = {
    script: collections.Counter(w for stop_words, _ in profiles.values() for w in stop_words)
    for script, profiles in _PROFILES.items()
}

_DOTTED = re.compile(r"\b\w(?:\.\w)+\.?")
_SEPARATORS = re.compile(r"[\s\d.,;:!?()\[\]{}\"'“”‘’«»„।॥،؛؟…\-–—/*#_|<>]+")


def _script_of(char: str) -> str | None:
    cp = ord(char)
    i = bisect.bisect_right(_RANGE_STARTS, cp) - 1
    if i >= 0 and _SCRIPT_RANGES[i][0] <= cp <= _SCRIPT_RANGES[i][1]:
        return _SCRIPT_RANGES[i][2]
    return None


def script_counts(text: str) -> collections.Counter[str]:
    """Number of characters of each known script in ``text``."""
    return collections.Counter(s for s in map(_script_of, text) if s is not None)


def detect_language(text: str) -> str | None:
    """Language code (ISO 639-1) of ``text``, or None when it holds no letters we know."""
    counts = script_counts(text)
    if not counts:
        return None
    if counts["han"] or counts["kana"]:
        cjk = counts.pop("han", 0) + counts.pop("kana", 0)
        counts["cjk"] = cjk
    script = counts.most_common(1)[0][0]
    if script == "cjk":
        return "ja" if _has_kana(text) else "zh"
    if script in _SINGLE_LANGUAGE_SCRIPTS:
        return _SINGLE_LANGUAGE_SCRIPTS[script]
    return _best_profile(text.lower(), _PROFILES[script], _SHARES[script])


def _has_kana(text: str) -> bool:
    return any(_script_of(c) == "kana" for c in text)


def _best_profile(
    text: str,
    profiles: dict[str, tuple[frozenset[str], str]],
    shares: collections.Counter[str],
) -> str:
    """The language with the most evidence; ties as in the module docstring (exact: Fractions)."""
    text = _DOTTED.sub(" ", text)  # "i.e.", "e.g.": not the Italian "e" nor the English "i"
    tokens = collections.Counter(t for t in _SEPARATORS.split(text) if t)

    def key(lang: str) -> tuple[Fraction, int]:
        stop_words, markers = profiles[lang]
        hits = [w for w in tokens if w in stop_words]
        marks = {m: text.count(m) for m in set(markers) if m in text}
        evidence = sum(Fraction(tokens[w], shares[w]) for w in hits)
        evidence += _MARKER_WEIGHT * sum(marks.values())
        return evidence, len(hits) + len(marks)

    return max(profiles, key=key)  # max keeps the first of equal keys: the table order
