"""Lead signals from one inbound message, in English, French and Spanish: tone, urgency, lead score,
stated name and email, and numbers reserved for fiction or testing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents import signals
from agents.intent import Classification, Intent
from agents.signals import Tone, Urgency

# --- tone -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    # en
    ("Thanks so much! 😊", Tone.FRIENDLY),
    ("perfect thx", Tone.FRIENDLY),
    ("Yes please, sounds good :)", Tone.FRIENDLY),
    ("Thank you!!!", Tone.FRIENDLY),  # emphasis after warm words is warmth
    ("thankssss", Tone.FRIENDLY),
    ("ok 👍🏼", Tone.FRIENDLY),
    ("Dear Dr. Smith, I would like to inquire about whitening. Kind regards, Paul", Tone.FORMAL),
    ("Good morning, would it be possible to reschedule? Regards", Tone.FORMAL),
    ("This is ridiculous, still waiting for a call back!!!", Tone.FRUSTRATED),
    ("CALL ME BACK NOW", Tone.FRUSTRATED),
    ("STOP TEXTING ME", Tone.FRUSTRATED),
    ("😡😡", Tone.FRUSTRATED),
    ("where is my technician?!", Tone.FRUSTRATED),
    ("great, still waiting", Tone.FRUSTRATED),  # sarcasm: frustration wins ties
    ("Thanks for nothing", Tone.FRUSTRATED),
    ("not happy with the cleaning", Tone.FRUSTRATED),
    ("Dear Sir, this is unacceptable. Regards", Tone.FRUSTRATED),  # anger in a formal register
    ("This service has been a nightmare", Tone.FRUSTRATED),
    ("What time do you open?", Tone.NEUTRAL),
    ("Ok see you tomorrow", Tone.NEUTRAL),
    ("See you tomorrow!!", Tone.NEUTRAL),  # a plain "!!" only amplifies a cue already there
    ("HVAC quote ASAP please", Tone.NEUTRAL),  # acronyms are not shouting
    ("No thanks", Tone.NEUTRAL),  # a polite refusal is not warmth
    ("10:30 works", Tone.NEUTRAL),
    ("", Tone.NEUTRAL),
    # fr
    ("merci beaucoup, c'est parfait", Tone.FRIENDLY),
    ("Géniaaal, à bientôt 😊", Tone.FRIENDLY),
    ("Bonjour Madame, je souhaiterais un rendez-vous. Cordialement", Tone.FORMAL),
    ("Monsieur, pourriez-vous me rappeler ?", Tone.FORMAL),
    ("Bonjour Madame, merci !", Tone.FORMAL),  # the formula sets the register
    ("j'en ai marre, toujours personne", Tone.FRUSTRATED),
    ("C'est inadmissible, personne n'est venu", Tone.FRUSTRATED),
    ("Très mauvaise expérience, je ne reviendrai pas", Tone.FRUSTRATED),
    ("Non merci", Tone.NEUTRAL),
    ("Quel est le tarif ?", Tone.NEUTRAL),
    # es
    ("¡Muchas gracias! 🙏", Tone.FRIENDLY),
    ("jajaja perfecto", Tone.FRIENDLY),
    ("Estimado señor, quisiera una cita. Atentamente", Tone.FORMAL),
    ("Buenas tardes, ¿podría usted confirmarme la cita?", Tone.FORMAL),
    ("Esto es inaceptable, nadie me llamó", Tone.FRUSTRATED),
    ("Estoy harta, pésimo servicio", Tone.FRUSTRATED),
    ("no estoy satisfecha 😠", Tone.FRUSTRATED),
    ("Muy mala experiencia, no vuelvo", Tone.FRUSTRATED),
    ("No, gracias", Tone.NEUTRAL),
    ("hola, quiero una cita", Tone.NEUTRAL),
])
def test_tone_reads_register_and_mood(text, expected):
    assert signals.tone(text) is expected


# --- urgency --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "intent"), [
    # explicit urgency and emergencies
    ("My sink is leaking, can someone come asap?", Intent.OTHER),
    ("URGENTTTT please call", Intent.QUESTION),
    ("This is an emergency", Intent.OTHER),
    ("Broken tooth, I'm in pain", Intent.BOOKING),
    ("c'est urgent, fuite d'eau", Intent.OTHER),
    ("Il faudrait intervenir en urgence", Intent.BOOKING),
    ("j'ai une rage de dents", Intent.OTHER),
    ("es urgente, tengo una fuga en la cocina", Intent.OTHER),
    ("me duele mucho la muela", Intent.BOOKING),
    ("busy today but the basement is flooding", Intent.OTHER),  # emergencies are not deferred
    # same-day words, whatever the sentence: a same-day window closes if nobody answers quickly
    ("I can stop by today", Intent.BOOKING),
    ("Do you have anything tonight?", Intent.BOOKING),
    ("Can someone come right now?", Intent.QUESTION),
    ("No, today works!", Intent.BOOKING),  # the "no" belongs to another clause
    ("pouvez-vous venir tout de suite ?", Intent.BOOKING),
    ("C'est possible aujourd’hui ?", Intent.QUESTION),
    ("¿Pueden venir hoy?", Intent.BOOKING),
    ("necesito una cita ahora mismo", Intent.BOOKING),
    # complaints with strong cues
    ("This is unacceptable!!!", Intent.COMPLAINT),
    ("C'est inadmissible", Intent.COMPLAINT),
    ("Pésimo servicio 😡", Intent.COMPLAINT),
])
def test_explicit_urgency_same_day_words_and_heated_complaints_are_high(text, intent):
    assert signals.urgency(text, intent) is Urgency.HIGH


@pytest.mark.parametrize(("text", "intent"), [
    ("Can I book a cleaning next week?", Intent.BOOKING),
    ("How much is a cleaning?", Intent.QUESTION),
    ("Sounds interesting, tell me more", Intent.INTERESTED),
    ("The tech left a mess in the kitchen", Intent.COMPLAINT),  # a calm complaint
    # negated cues
    ("not urgent, next week is fine", Intent.BOOKING),
    ("Not an emergency but the faucet drips", Intent.QUESTION),
    ("I don't need it today", Intent.BOOKING),
    ("rien d'urgent, c'est pour un devis", Intent.QUESTION),
    ("pas aujourd'hui, plutôt jeudi", Intent.BOOKING),
    ("no es urgente", Intent.QUESTION),
    ("hoy no puedo, mañana sí", Intent.BOOKING),
    # deferrals cancel same-day words
    ("busy right now, text me later", Intent.QUESTION),
    ("No rush, whenever works", Intent.BOOKING),
    ("Later today works", Intent.BOOKING),
    ("je suis au travail, rappelez-moi plus tard aujourd'hui", Intent.BOOKING),
    ("estoy ocupada ahora mismo", Intent.QUESTION),
])
def test_engaged_intents_without_urgent_cues_are_medium(text, intent):
    assert signals.urgency(text, intent) is Urgency.MEDIUM


@pytest.mark.parametrize(("text", "intent"), [
    ("ok", Intent.OTHER),
    ("Who is this?", Intent.OTHER),
    ("HELP", Intent.HELP),
    ("stop texting me right now", Intent.OPT_OUT),
    ("wrong number, stop texting me today", Intent.WRONG_NUMBER),
    ("not interested right now, it's urgent that you stop", Intent.NOT_INTERESTED),
    ("START", Intent.OPT_IN),
    ("arrêtez tout de suite", Intent.OPT_OUT),
    ("número equivocado, hoy mismo lo digo", Intent.WRONG_NUMBER),
])
def test_other_and_compliance_intents_are_low(text, intent):
    assert signals.urgency(text, intent) is Urgency.LOW


# --- lead confidence ------------------------------------------------------------------------------


@pytest.mark.parametrize(("intent", "confidence", "previous", "expected"), [
    (Intent.BOOKING, 1.0, None, 0.95),
    (Intent.INTERESTED, 1.0, None, 0.9),
    (Intent.QUESTION, 1.0, None, 0.65),
    (Intent.OTHER, 1.0, None, 0.5),
    (Intent.COMPLAINT, 1.0, None, 0.2),
    (Intent.NOT_INTERESTED, 1.0, None, 0.1),
    (Intent.WRONG_NUMBER, 1.0, None, 0.0),
    (Intent.OPT_OUT, 1.0, None, 0.0),
    (Intent.INTERESTED, 0.5, None, 0.7),  # an unsure classification stays near neutral
    (Intent.INTERESTED, 0.0, None, 0.5),
    (Intent.BOOKING, 1.0, 0.45, 0.7),  # 0.5 * 0.95 + 0.5 * 0.45
    (Intent.OPT_OUT, 1.0, 0.9, 0.45),
    (Intent.QUESTION, 0.8, 0.3, 0.46),  # 0.5 * (0.5 + 0.8 * 0.15) + 0.5 * 0.3
])
def test_lead_confidence_follows_the_documented_formula(intent, confidence, previous, expected):
    assert signals.lead_confidence(intent, confidence, previous) == pytest.approx(expected)


def test_lead_confidence_ranks_intents_from_booking_down_to_opt_out():
    order = [Intent.BOOKING, Intent.INTERESTED, Intent.QUESTION, Intent.OTHER, Intent.COMPLAINT,
             Intent.NOT_INTERESTED, Intent.WRONG_NUMBER]
    scores = [signals.lead_confidence(intent, 0.9, None) for intent in order]
    assert scores == sorted(scores, reverse=True)


def test_lead_confidence_converges_to_the_intent_score_when_the_lead_repeats_itself():
    score = 0.1
    for _ in range(10):
        score = signals.lead_confidence(Intent.INTERESTED, 1.0, score)
    assert score == pytest.approx(0.9, abs=0.01)


@given(
    intent=st.sampled_from(Intent),
    confidence=st.floats(allow_nan=True, allow_infinity=True),
    previous=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_lead_confidence_is_always_a_two_decimal_number_in_the_unit_interval(intent, confidence, previous):
    score = signals.lead_confidence(intent, confidence, previous)
    assert 0.0 <= score <= 1.0 and not math.isnan(score)
    assert score == round(score, 2)


# --- stated name ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "name"), [
    # en
    ("my name is ana ruiz", "Ana Ruiz"),
    ("My name is Sarah Connor.", "Sarah Connor"),
    ("Hi, this is Sarah!", "Sarah"),
    ("Hi I'm Mike Johnson and I need a quote", "Mike Johnson"),
    ("No, this is Jake. Wrong number", "Jake"),
    ("I am Priya", "Priya"),
    ("Hi it's Jo, from yesterday", "Jo"),
    ("this is Ty", "Ty"),
    ("HI THIS IS JOHN SMITH CALL ME BACK", "John Smith"),
    ("my name is Sean McDonald", "Sean McDonald"),  # mixed case is kept
    ("I'm O'BRIEN", "O'Brien"),
    ("My name is Dr. Sarah Lee", "Sarah Lee"),
    ("my name is Mary Anne Smith Jones", "Mary Anne Smith"),  # at most three words
    ("I’m Zoë", "Zoë"),
    # fr
    ("je m'appelle Jean-Pierre", "Jean-Pierre"),
    ("Bonjour, je m’appelle camille durand", "Camille Durand"),
    ("C'est Marie ici", "Marie"),
    ("Bonjour, c'est Marie Dupont à l'appareil", "Marie Dupont"),
    ("Moi c'est Julie", "Julie"),
    ("Bonjour, je suis Hélène Martin", "Hélène Martin"),
    ("Ici Paul, je voudrais un rdv", "Paul"),
    ("mon nom est Lefebvre", "Lefebvre"),
    # es
    ("me llamo María de la Cruz", "María"),  # particles end the name
    ("mi nombre es carlos", "Carlos"),
    ("Soy Ana", "Ana"),
    ("No, soy Carlos", "Carlos"),
    ("Hola, habla Carlos Gómez", "Carlos Gómez"),
    ("Hola! Soy José Luis, quiero una cita", "José Luis"),
])
def test_a_stated_name_is_read_and_title_cased(text, name):
    assert signals.stated_name(text) == name


@pytest.mark.parametrize("text", [
    # en
    "I'm interested", "I'm not sure", "I'm Interested in whitening", "Im good thanks", "I am Looking for a dentist",
    "i'm john",  # lower case after a short trigger is not trusted; "my name is john" is
    "this is ridiculous", "This is Urgent", "This is Sarah's mom", "It's Monday", "this is Bright Plumbing",
    "My name is on the list", "Who is this?", "I'm OK", "It's Me again", "",
    # fr
    "C'est parfait", "Je suis intéressée", "Je suis Disponible demain", "je suis en retard", "Ici on est ouverts ?",
    # es
    "Soy Mexicana", "soy nueva aquí", "me llamo ayer su oficina", "Estoy interesado", "¿Habla Inglés?",
    "No soy Carlos", "Se equivocó, no me llamo Daniela",  # denials
])
def test_phrases_that_only_look_like_introductions_give_no_name(text):
    assert signals.stated_name(text) is None


@given(
    st.sampled_from(["Ana", "José", "Zoë", "Jean-Luc", "Siobhan", "Nguyen"]),
    st.sampled_from(["My name is {}", "my name is {}, thanks", "Je m'appelle {}.", "Me llamo {}!", "Hi, this is {}"]),
)
def test_any_name_after_a_trigger_is_returned_as_written(name, template):
    assert signals.stated_name(template.format(name)) == name


# --- stated email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "email"), [
    ("email me at John.Doe@Example.com.", "john.doe@example.com"),
    ("mail: maria_lopez+spa@correo.es gracias", "maria_lopez+spa@correo.es"),
    ("mon email c'est jean-paul.dupont@orange.fr", "jean-paul.dupont@orange.fr"),
    ("mi correo es josé@ejemplo.mx", "josé@ejemplo.mx"),
    ("first a@b then real@mail.co.uk", "real@mail.co.uk"),
])
def test_a_stated_email_is_found_and_lower_cased(text, email):
    assert signals.stated_email(text) == email


@pytest.mark.parametrize("text", ["a@b", "@handle", "john at gmail dot com", "meet @ 5pm", "user@localhost", ""])
def test_text_without_a_full_email_address_gives_none(text):
    assert signals.stated_email(text) is None


# --- test numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [
    "+14155550101", "+12125550199", "+14155550100",  # NANP 555-0100..0199
    "+15005550006", "+15005550001",  # Twilio magic numbers
    "+447700900123", "+442079460958", "+441632960000", "+441614960999",  # Ofcom drama ranges
    "+1 415 555 0150", "whatsapp:+14155550150",  # normalised first
])
def test_numbers_reserved_for_fiction_or_testing_are_test_numbers(number):
    assert signals.is_test_number(number)


@pytest.mark.parametrize("number", [
    "+14155550200", "+14155551234", "+15005551000", "+447700901123", "+442079461000", "+33612345678",
    "+34612345678", "", None, "garbage", "+1",
])
def test_real_looking_and_invalid_numbers_are_not_test_numbers(number):
    assert not signals.is_test_number(number)


@given(st.text())
def test_is_test_number_never_raises(text):
    assert signals.is_test_number(text) in (True, False)


# --- extract --------------------------------------------------------------------------------------


def _classified(intent: Intent, confidence: float = 0.9) -> Classification:
    return Classification(intent=intent, confidence=confidence, language="en", implementation="local")


def test_extract_gathers_every_signal_of_a_message():
    text = "Hi, this is Sarah Lee! My sink is leaking, can you come today? sarah.lee@example.com thanks 🙏"
    assert signals.extract(text, _classified(Intent.BOOKING, 1.0), previous_confidence=0.45) == signals.Signals(
        tone=Tone.FRIENDLY, urgency=Urgency.HIGH, confidence=0.7, name="Sarah Lee", email="sarah.lee@example.com"
    )


@pytest.mark.parametrize(("text", "intent"), [
    ("This is unacceptable!!!", Intent.COMPLAINT),
    ("The tech left a mess", Intent.COMPLAINT),
    ("Bonjour Madame, c'est possible aujourd'hui ?", Intent.QUESTION),
    ("stop now", Intent.OPT_OUT),
    ("", Intent.OTHER),
])
def test_extract_agrees_with_the_individual_functions(text, intent):
    result = signals.extract(text, _classified(intent), None)
    assert result.tone is signals.tone(text)
    assert result.urgency is signals.urgency(text, intent)
    assert result.confidence == signals.lead_confidence(intent, 0.9, None)
    assert result.name == signals.stated_name(text)
    assert result.email == signals.stated_email(text)


@given(text=st.text(), intent=st.sampled_from(Intent), confidence=st.floats(0, 1),
       previous=st.none() | st.floats(0, 1))
def test_extract_never_raises_and_stays_in_range(text, intent, confidence, previous):
    result = signals.extract(text, _classified(intent, confidence), previous)
    assert result.tone in Tone and result.urgency in Urgency
    assert 0.0 <= result.confidence <= 1.0
    assert result.name is None or 1 <= len(result.name.split()) <= 3
    assert result.email is None or (result.email == result.email.lower() and "@" in result.email)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.from_regex(
    r"(?i)(my name is|i'm|soy|c'est|je m'appelle) [A-Za-zÀ-ÿ' -]{0,40}( ici)?", fullmatch=True
))
def test_stated_name_never_raises_on_odd_text(text):
    name = signals.stated_name(text)
    assert name is None or (name.strip() == name and name)
