"""``bench.run``'s slow phase matches the replies the fake Twilio received to the texts sent: a reply answers every
text of its conversation sent before it and not answered yet, a text no reply followed is unanswered, a reply that
answers no text is counted apart; and the fake Twilio counts a body sent twice to one number as a repeat."""

from __future__ import annotations

from bench.driver import Shot
from bench.fake_twilio import ReplyLog
from bench.phases.slow import match_replies
from tests.fakes.twilio import SentSms

A, B = "+14155550001", "+14155550002"


def test_replies_answer_the_texts_before_them_once() -> None:
    sent = [Shot(A, wall=10.0), Shot(A, wall=10.5), Shot(A, wall=25.0), Shot(B, wall=11.0), Shot(B, wall=26.0)]
    received = {A: [12.0, 27.0], B: [12.5, 13.0]}
    latencies, unanswered, duplicates = match_replies(sent, received)
    # A: 12.0 answers both early texts (one reply to texts that came together), 27.0 the third.
    # B: 12.5 answers the first, 13.0 answers nothing, the text at 26.0 has no reply.
    assert sorted(latencies) == [1.5, 1.5, 2.0, 2.0]
    assert (unanswered, duplicates) == (1, 1)


def test_a_text_whose_webhook_failed_is_still_matched() -> None:
    timed_out = Shot(A, wall=10.0, latency_s=15.0, status=0)
    assert match_replies([timed_out], {A: [16.0]}) == ([6.0], 0, 0)


def test_the_fake_twilio_counts_a_body_sent_twice_to_one_number() -> None:
    log = ReplyLog()
    for to, body in ((A, "You said: slow 1"), (A, "You said: slow 2"), (B, "You said: slow 1"),
                     (A, "You said: slow 1")):
        log.append(SentSms(sid="SM1", account_sid="AC", to=to, from_="+15035550100", body=body,
                           status_callback=None))
    assert (log.count, log.repeats, sorted(log.times)) == (4, 1, [A, B])
    log.clear()
    assert (log.count, log.repeats, log.times, log.bodies) == (0, 0, {}, {})
