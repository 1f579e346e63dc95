"""IFEval verifiers, loose/strict scoring, aggregation and data loading."""

import json
import math
import pathlib

import pytest

from align_jax.instructions import (
    INSTRUCTION_IDS,
    VERIFIERS,
    build_verifier,
    check,
    detect_language,
    evaluate_responses,
    load_ifeval,
    loose_variants,
)
from align_jax.instructions.data import InstructionExample
from align_jax.instructions.evaluation import EMPTY_RESPONSE, MISSING_RESPONSE
from align_jax.instructions.text import count_sentences, count_words

IFEVAL_PATH = pathlib.Path(__file__).resolve().parents[3] / "shared/data/ifeval/input_data.jsonl"

END = "Is there anything else I can help with?"
GERMAN = "Das Wetter ist heute schön und wir gehen mit unseren Freunden in den Park."
ENGLISH = "The weather is nice today and we are going to the park with our friends."

# (instruction id, kwargs, response, expected strict result)
CASES = [
    ("punctuation:no_comma", {}, "Hello world. No commas here.", True),
    ("punctuation:no_comma", {}, "Hello, world.", False),
    # \w+ word counts; the boundary: "at least 5" passes at 5, "less than 5" fails at 5.
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three four five", True),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 5}, "one two three four", False),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three four", True),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three four five", False),
    ("length_constraints:number_words", {"relation": "at least", "num_words": 3}, "it's fine", True),  # it, s, fine
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3}, "One. Two! Three?", True),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3}, "Dr. Smith arrived at 3.30 p.m. today. He sat.", False),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "Dr. Smith arrived. He sat.", True),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 3}, "One. Two. Three.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "a\n***\nb\n***\nc", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "***\na\n***\nb\n***\nc\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "a\n***\n\n***\nc", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "a\n***\nb", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "imagine"},
     'Intro text.\n\n"Imagine, this." More text.', True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "imagine"},
     "Intro text.\n\nPicture this.", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "imagine"},
     "Intro.\n\nImagine this.\n\nA third one.", False),
    ("keywords:existence", {"keywords": ["lantern", "Compass"]}, "A LANTERN and a compass.", True),
    ("keywords:existence", {"keywords": ["lantern", "Compass"]}, "A lantern only.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["good"]}, "Goodness, this is fine.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["good"]}, "It is Good.", False),
    ("keywords:frequency", {"keyword": "time", "relation": "at least", "frequency": 2}, "Time after time.", True),
    ("keywords:frequency", {"keyword": "time", "relation": "at least", "frequency": 2}, "One time.", False),
    ("keywords:frequency", {"keyword": "time", "relation": "less than", "frequency": 2}, "One time.", True),
    ("keywords:frequency", {"keyword": "time", "relation": "less than", "frequency": 2}, "Timely, time.", False),  # substring count
    ("keywords:letter_frequency", {"letter": "e", "let_relation": "at least", "let_frequency": 3}, "eEe", True),
    ("keywords:letter_frequency", {"letter": "e", "let_relation": "at least", "let_frequency": 3}, "ee", False),
    ("keywords:letter_frequency", {"letter": "!", "let_relation": "less than", "let_frequency": 2}, "Wow!", True),
    ("keywords:letter_frequency", {"letter": "!", "let_relation": "less than", "let_frequency": 2}, "Wow!!", False),
    ("change_case:english_lowercase", {}, "hello there, this is the answer and it is final.", True),
    ("change_case:english_lowercase", {}, "Hello there, this is the answer.", False),
    ("change_case:english_lowercase", {}, "das ist die antwort und sie ist nicht falsch.", False),  # not English
    ("change_case:english_capital", {}, "THIS IS THE ANSWER AND IT IS FINAL.", True),
    ("change_case:english_capital", {}, "THIS IS the answer.", False),
    ("change_case:english_capital", {}, "DAS IST DIE ANTWORT UND SIE IST NICHT FALSCH.", False),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 3}, "I LOVE NEW things.", True),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 3}, "Only ONE here.", False),
    ("change_case:capital_word_frequency", {"capital_relation": "less than", "capital_frequency": 2}, "Only ONE here.", True),
    ("change_case:capital_word_frequency", {"capital_relation": "less than", "capital_frequency": 2}, "DON'T.", False),  # DON + 'T
    ("language:response_language", {"language": "de"}, GERMAN, True),
    ("language:response_language", {"language": "de"}, ENGLISH, False),
    ("language:response_language", {"language": "de"}, "12345 !!!", False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '  {"a": [1, 2]}  ', True),
    ("detectable_format:json_format", {}, "```\n[1, 2]\n```", True),
    ("detectable_format:json_format", {}, 'Here is JSON: {"a": 1}', False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1,}\n```', False),
    ("detectable_format:title", {}, "<<My Title>>\nBody text.", True),
    ("detectable_format:title", {}, "<<   >>\nBody text.", False),
    ("detectable_format:title", {}, "<My Title>\nBody text.", False),
    ("detectable_format:title", {}, "<<My\nTitle>>", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "Intro\n* one\n- two", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, "**Bold line**\n* one", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- one\n- two\n- three", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and *two*", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "**bold** and *it*", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and * *", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "*not\nclosed* here", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2}, "SECTION 1\nIntro\nSECTION 2\nMore", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2}, "SECTION 1\nOnly one.", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2}, "Section 1\nA\nSection 2\nB", False),
    ("detectable_format:constrained_response", {}, "Having thought about it: My answer is maybe.", True),
    ("detectable_format:constrained_response", {}, "My answer is: yes", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\n\nP.S. See you soon.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body without a postscript.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\nP.P.S Also this.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\nP.S. Only one.", False),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Body.\nnote: custom marker.", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], I live at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], I live here.", False),
    ("startend:end_checker", {"end_phrase": END}, f"Done. {END}", True),
    ("startend:end_checker", {"end_phrase": END}, f'"Done. {END.lower()}"  \n', True),
    ("startend:end_checker", {"end_phrase": END}, f"Done. {END} Thanks.", False),
    ("startend:quotation", {}, '  "hello there"  ', True),
    ("startend:quotation", {}, '"', False),
    ("startend:quotation", {}, 'hello "there"', False),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:two_responses", {}, "A\n******\n\n******\nB", False),
    ("combination:two_responses", {}, "A ****** B ****** C", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses are red.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Sure! Write a poem. Roses are red.", False),
]


@pytest.mark.parametrize("instruction_id,kwargs,response,expected", CASES)
def test_verifier_cases(instruction_id, kwargs, response, expected):
    assert check(instruction_id, response, kwargs) is expected


def test_every_instruction_type_has_pass_and_fail_cases():
    assert len(INSTRUCTION_IDS) == 25
    passing = {i for i, _, _, e in CASES if e}
    failing = {i for i, _, _, e in CASES if not e}
    assert passing == failing == set(INSTRUCTION_IDS)


def test_offline_counting():
    assert count_words("Hello, world! It's 2024.") == 5
    assert count_sentences("") == 0
    assert count_sentences("No final punctuation") == 1
    assert count_sentences('He said "Stop." Then he left. E.g. this stays; i.e. one.') == 3
    assert count_sentences("Pi is 3.14 and e is 2.71. Done.") == 2


# Expected counts are those of IFEval's checker (nltk punkt with its English model): a period
# after a number ends a sentence unless the next word starts in lower case or is punctuation.
@pytest.mark.parametrize(
    "text,expected",
    [
        ("1. Apples are red.\n2. Bananas are yellow.", 4),  # "1." | "Apples are red." | "2." | ...
        ("1. apples are red.\n2. bananas are yellow.", 2),  # "1. apples are red." | "2. bananas ..."
        ("Here is a list:\n1. Apples are red.\n2. Bananas are yellow.\n3. Grapes are purple.", 6),
        ("1) Apples are red.\n2) Bananas are yellow.", 2),  # no period after the number
        ("Step 1. Mix the flour. Step 2. Bake it.", 4),  # "Step 1." | "Mix the flour." | ...
        ("He scored 10. Then he left.", 2),
        ("Pick option 2. it is cheaper.", 1),
        ("It rose 3.5. then it fell.", 1),
        ("Sales hit 1,000. a record.", 1),
        ("Answer (1. do this; 2. do that).", 1),  # "(" is split off before the number
        ("Rule 1. , then more.", 1),
        ("He left. then he came back.", 2),  # only numbers (and abbreviations) look ahead
        ("Version 2.0. Released today.", 2),
    ],
)
def test_count_sentences_numbers_as_punkt(text, expected):
    assert count_sentences(text) == expected


@pytest.mark.parametrize(
    "language,text",
    [
        ("it", "Il mio nome è Marco e sono di Roma, ma adesso vivo a Milano con la mia famiglia."),
        ("it", "Sono in Italia."),  # "in" is English and Italian: Italian has "sono" as well
        ("it", "Ho fame."),
        ("it", "La casa è grande."),  # "la" is French, Spanish and Italian; "è" is Italian
        ("it", "Mi piace la pizza."),
        ("it", "Quando arrivi a casa, chiamami."),
        ("it", "Vado a casa come sempre."),
        ("en", "What is love?"),  # a tie on "is", which Dutch shares: the table order decides
        ("en", "It is Miguel de Cervantes."),  # an exact tie with Dutch ("is", "de"): the same
        ("en", "I live in Rome."),
        ("en", "Do not use commas."),  # "do" is also Portuguese
        ("en", "Include a title in double angular brackets, i.e. <<title>>."),  # not Italian "e"
        ("en", "HELLO WORLD"),  # no evidence: the Latin default
        ("fr", "Le chat est sur la table."),
        ("fr", "Je ne sais pas ce que tu veux dire."),
        ("es", "El gato está en la mesa."),
        ("es", "Los niños juegan en el parque."),
        ("de", "Die Katze ist auf dem Tisch."),
        ("de", "Ich weiß nicht, was du meinst."),
        ("pt", "Onde fica a estação de trem?"),
    ],
)
def test_detect_language_short_texts_and_ties(language, text):
    assert detect_language(text) == language


@pytest.mark.parametrize(
    "language,text,confusable",
    [
        ("de", GERMAN, "en"),
        ("pt", "O tempo está bom hoje e nós vamos ao parque com os nossos amigos.", "es"),
        ("it", "Il tempo è bello oggi e andiamo al parco con i nostri amici.", "pt"),
        ("fi", "Sää on tänään kaunis ja menemme puistoon ystäviemme kanssa.", "de"),
        ("sw", "Hali ya hewa ni nzuri leo na tunaenda kwenye bustani pamoja na marafiki zetu.", "en"),
        ("vi", "Hôm nay thời tiết đẹp và chúng tôi đi công viên với bạn bè.", "fr"),
        ("ru", "Сегодня хорошая погода, и мы идём в парк с нашими друзьями.", "bg"),
        ("bg", "Времето днес е хубаво и ние отиваме в парка с нашите приятели.", "ru"),
        ("ar", "الطقس جميل اليوم ونحن ذاهبون إلى الحديقة مع أصدقائنا.", "fa"),
        ("fa", "امروز هوا خوب است و ما با دوستانمان به پارک می‌رویم.", "ur"),
        ("ur", "آج موسم اچھا ہے اور ہم اپنے دوستوں کے ساتھ پارک جا رہے ہیں۔", "fa"),
        ("hi", "आज मौसम अच्छा है और हम अपने दोस्तों के साथ पार्क जा रहे हैं।", "mr"),
        ("mr", "आज हवामान छान आहे आणि आम्ही आमच्या मित्रांसोबत उद्यानात जात आहोत.", "hi"),
        ("ne", "आज मौसम राम्रो छ र हामी साथीहरूसँग पार्क जाँदैछौं।", "hi"),
        ("ko", "오늘 날씨가 좋아서 친구들과 공원에 갑니다.", "ja"),
        ("th", "วันนี้อากาศดีและเราจะไปสวนสาธารณะกับเพื่อน", "en"),
        ("bn", "আজ আবহাওয়া ভালো এবং আমরা বন্ধুদের সাথে পার্কে যাচ্ছি।", "hi"),
        ("ta", "இன்று வானிலை நன்றாக உள்ளது", "te"),
        ("te", "ఈ రోజు వాతావరణం బాగుంది", "kn"),
        ("kn", "ಇಂದು ಹವಾಮಾನ ಚೆನ್ನಾಗಿದೆ", "te"),
        ("gu", "આજે હવામાન સારું છે", "hi"),
        ("pa", "ਅੱਜ ਮੌਸਮ ਵਧੀਆ ਹੈ", "hi"),
    ],
)
def test_response_language(language, text, confusable):
    assert detect_language(text) == language
    assert check("language:response_language", text, {"language": language})
    assert not check("language:response_language", text, {"language": confusable})


def test_options_are_validated():
    with pytest.raises(KeyError, match="unknown instruction 'nope:x'"):
        build_verifier("nope:x", {})
    with pytest.raises(ValueError, match="needs option"):
        build_verifier("length_constraints:number_words", {"relation": "at least"})
    with pytest.raises(ValueError, match="must be one of"):
        build_verifier("length_constraints:number_words", {"relation": "exactly", "num_words": 3})
    with pytest.raises(ValueError, match="num_words='3' must be int"):
        build_verifier("length_constraints:number_words", {"relation": "at least", "num_words": "3"})
    with pytest.raises(ValueError, match="must be a list of str"):
        build_verifier("keywords:existence", {"keywords": "lantern"})
    with pytest.raises(ValueError, match="unknown option"):
        build_verifier("punctuation:no_comma", {"num_words": 3})
    # None values mean "absent".
    assert build_verifier("punctuation:no_comma", {"num_words": None})("no commas")


# --- strict versus loose -----------------------------------------------------------------


def test_loose_variants_are_the_papers_eight():
    variants = loose_variants("Sure, *here*:\nbody\nbye")
    assert variants == (
        "Sure, *here*:\nbody\nbye", "Sure, here:\nbody\nbye", "body\nbye", "Sure, *here*:\nbody",
        "body", "body\nbye", "Sure, here:\nbody", "body",
    )


@pytest.mark.parametrize(
    "instruction_id,kwargs,response",
    [
        ("punctuation:no_comma", {}, "Sure, here it is:\nNo commas in the answer."),  # first line
        ("startend:quotation", {}, 'Here you go:\n"A quoted answer."'),  # first line
        ("startend:end_checker", {"end_phrase": "Peace!"}, "Body. **Peace!**"),  # asterisks
        ("startend:end_checker", {"end_phrase": "Peace!"}, "Body. Peace!\n(12 words)"),  # last line
        ("detectable_format:json_format", {}, 'Here it is:\n{"a": 1}\nEnjoy!'),  # both lines
    ],
)
def test_loose_rescues_what_strict_rejects(instruction_id, kwargs, response):
    example = InstructionExample("k", "p", (instruction_id,), (kwargs,))
    result = evaluate_responses([example], [response]).examples[0]
    assert result.strict == (False,) and result.loose == (True,)


def test_loose_does_not_rescue_a_real_failure():
    example = InstructionExample("k", "p", ("punctuation:no_comma",), ({},))
    result = evaluate_responses([example], ["Hi,\nthere, you,\nbye,"]).examples[0]
    assert result.strict == result.loose == (False,)


# --- aggregation -------------------------------------------------------------------------


def test_accuracies_on_a_hand_computed_table():
    examples = [
        InstructionExample("a", "p", ("punctuation:no_comma", "startend:quotation"), ({}, {})),
        InstructionExample("b", "p", ("punctuation:no_comma", "length_constraints:number_words"),
                           ({}, {"relation": "at least", "num_words": 3})),
        InstructionExample("c", "p", ("change_case:english_lowercase",), ({},)),
        InstructionExample("d", "p", ("unknown:thing", "punctuation:no_comma"), ({}, {})),
    ]
    responses = ['"hello world"', "Sure, here:\nthree words here", "   ", "ok"]
    # strict: a [T T]  b [F T]  c [F]  d [F T]   loose: a [T T]  b [T T]  c [F]  d [F T]
    report = evaluate_responses(examples, responses)
    assert report.prompt_level_strict == 1 / 4
    assert report.prompt_level_loose == 2 / 4
    assert report.instruction_level_strict == 4 / 7
    assert report.instruction_level_loose == 5 / 7
    assert (report.num_prompts, report.num_instructions) == (4, 7)
    no_comma = report.per_instruction["punctuation:no_comma"]
    assert (no_comma.count, no_comma.strict, no_comma.loose) == (3, 2 / 3, 1.0)
    assert report.per_instruction["unknown:thing"].strict == 0.0
    c, d = report.examples[2], report.examples[3]
    assert c.failure == EMPTY_RESPONSE and c.errors == (EMPTY_RESPONSE,)
    assert "unknown instruction 'unknown:thing'" in d.errors[0] and d.errors[1] is None
    assert set(report.summary()) == {
        "prompt_level_strict", "prompt_level_loose", "instruction_level_strict", "instruction_level_loose"
    }


def test_responses_by_key_and_missing_response():
    examples = [InstructionExample(1, "p", ("punctuation:no_comma",), ({},)),
                InstructionExample(2, "p", ("punctuation:no_comma",), ({},))]
    report = evaluate_responses(examples, {1: "fine"})
    assert [r.strict for r in report.examples] == [(True,), (False,)]
    assert report.examples[1].failure == MISSING_RESPONSE
    with pytest.raises(ValueError, match="2 examples but 1 responses"):
        evaluate_responses(examples, ["fine"])


# --- loading -----------------------------------------------------------------------------


def _write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD_ROW = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


@pytest.mark.parametrize(
    "bad_row,message",
    [
        ("{not json", "malformed IFEval row"),
        ({"key": 2, "prompt": "p", "kwargs": []}, "missing field"),
        ({**GOOD_ROW, "kwargs": [{}, {}]}, "1 instruction ids but 2 kwargs"),
        ({**GOOD_ROW, "instruction_id_list": "punctuation:no_comma"}, "list of strings"),
        ({**GOOD_ROW, "instruction_id_list": ["made:up"]}, "unknown instruction id"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, bad_row, message):
    path = _write(tmp_path, [GOOD_ROW, bad_row])
    with pytest.raises(ValueError, match=message) as info:
        load_ifeval(path)
    assert f"{path}:2" in str(info.value)


def test_load_drops_none_kwargs_and_can_skip_id_check(tmp_path):
    row = {**GOOD_ROW, "instruction_id_list": ["made:up"], "kwargs": [{"x": None, "y": 1}]}
    (example,) = load_ifeval(_write(tmp_path, [row, ""]), check_ids=False)
    assert example.kwargs == ({"y": 1},)


@pytest.mark.skipif(not IFEVAL_PATH.exists(), reason=f"IFEval data not found at {IFEVAL_PATH}")
def test_real_ifeval_file_loads_and_every_id_has_a_verifier():
    examples = load_ifeval(IFEVAL_PATH)
    assert len(examples) == 541
    ids = {i for e in examples for i in e.instruction_id_list}
    assert ids == set(VERIFIERS.names())
    for example in examples:
        for instruction_id, kwargs in zip(example.instruction_id_list, example.kwargs):
            build_verifier(instruction_id, kwargs)  # options accepted
    report = evaluate_responses(examples, [""] * len(examples))
    assert report.prompt_level_loose == 0.0 and report.num_instructions == 834
    assert not math.isnan(report.instruction_level_strict)
