"""autoban's policy, every transition, with an injected clock."""

from __future__ import annotations

import pytest

from pbxhost.autoban.policy import (
    Action,
    Settings,
    Standing,
    decode_sentence,
    decode_times,
    encode_sentence,
    encode_times,
    on_event,
)

S = Settings(maxcount=3, watchtime=60, jailtime=100, repeatmult=6, max_sentence=10_000)


def feed(settings: Settings, times: list[int]) -> tuple[Standing, list]:
    """Run events at TIMES through the policy, keeping state as the kernel would."""
    standing, verdicts = Standing(), []
    for now in times:
        verdict = on_event(settings, standing, now)
        verdicts.append(verdict)
        if verdict.action is Action.WATCH:
            standing = Standing(times=verdict.times)
        elif verdict.action is Action.JAIL:
            standing = Standing(jailed=True, sentence=verdict.sentence)
    return standing, verdicts


def test_more_than_maxcount_events_jail():
    _, verdicts = feed(S, [0, 1, 2])
    assert [v.action for v in verdicts] == [Action.WATCH] * 3  # maxcount events: still watched
    _, verdicts = feed(S, [0, 1, 2, 3])
    assert verdicts[-1].action is Action.JAIL and verdicts[-1].sentence == 100


def test_window_slides_old_events_fall_out():
    # 4 events, but never more than 3 within 60 s of each other
    _, verdicts = feed(S, [0, 30, 59, 61, 89])
    assert verdicts[3].times == (30, 59, 61)
    assert verdicts[3].action is Action.WATCH
    assert verdicts[4].action is Action.JAIL  # 30, 59, 61, 89 are within 60 s


def test_boundary_event_exactly_watchtime_old_has_left_the_window():
    assert on_event(S, Standing(times=(0, 1, 2)), 60).action is Action.WATCH
    assert on_event(S, Standing(times=(1, 2, 3)), 60).action is Action.JAIL


def test_window_keeps_only_maxcount_times():
    v = on_event(S, Standing(times=(1, 2)), 3)
    assert v.times == (1, 2, 3)


def test_event_while_jailed_is_ignored():
    v = on_event(S, Standing(jailed=True, sentence=100), 5)
    assert v.action is Action.IGNORE


def test_parole_offence_multiplies_sentence_and_caps():
    sentences = []
    sentence = 100
    for _ in range(5):
        v = on_event(S, Standing(sentence=sentence), 0)
        assert v.action is Action.JAIL
        sentence = v.sentence
        sentences.append(sentence)
    assert sentences == [600, 3600, 10_000, 10_000, 10_000]


def test_seed_progression_20m_2h_12h_3d():
    seed = Settings()
    sentence, got = seed.jailtime, [seed.jailtime]
    for _ in range(3):
        sentence = on_event(seed, Standing(sentence=sentence), 0).sentence
        got.append(sentence)
    assert got == [20 * 60, 2 * 3600, 12 * 3600, 3 * 86400]


def test_parole_silence_means_forgotten():
    # parole expired in the kernel: the standing is empty again, counting restarts
    v = on_event(S, Standing(), 1000)
    assert v.action is Action.WATCH and v.times == (1000,)


@pytest.mark.parametrize("standing", [Standing(whitelisted=True, sentence=100, times=(1, 2, 3)),
                                      Standing(trusted=True, times=(1, 2, 3))])
def test_whitelist_and_trust_never_jail(standing):
    assert on_event(S, standing, 4).action is Action.IGNORE


def test_times_comment_round_trip():
    times = (1795675185, 1795675185, 1795675188, 1795675200)
    comment = encode_times(times)
    assert comment == "events 1795675185 +0 +3 +12"
    assert decode_times(comment) == times


@pytest.mark.parametrize("comment", [None, "", "garbage", "events", "events 1 -2", "events x"])
def test_unreadable_times_comment_counts_as_nothing(comment):
    assert decode_times(comment) == ()


def test_sentence_comment_round_trip():
    assert decode_sentence(encode_sentence(7200)) == 7200
    assert decode_sentence("junk") is None


@pytest.mark.parametrize("kw", [{"maxcount": 0}, {"maxcount": 26}, {"watchtime": 0},
                                {"repeatmult": 0.5}, {"maxcount": 25, "watchtime": 10**9}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        Settings(**kw)


def test_largest_window_fits_a_comment():
    Settings(maxcount=25, watchtime=1200)  # accepted: 25 times within 20m fit
    times = tuple(10**10 + i * (1200 // 25) for i in range(25))
    assert decode_times(encode_times(times)) == times
    with pytest.raises(ValueError, match="do not fit"):
        Settings(maxcount=25, watchtime=86400)


# ---- scope by proof ------------------------------------------------------------------

def test_unproven_evidence_jails_sip_only_and_never_grows_a_sentence():
    from pbxhost.autoban.policy import Scope

    v = on_event(S, Standing(times=(1, 2, 3)), 4, proven=False)
    assert (v.action, v.scope, v.sentence, v.record) == (Action.JAIL, Scope.SIP, 100, 100)
    # in a sipjail, more unproven events change nothing
    assert on_event(S, Standing(sipjailed=True, sentence=100), 5, proven=False).action \
        is Action.IGNORE
    # on parole after a proven 3600 s sentence: SIP only, jailtime, the record kept
    v = on_event(S, Standing(sentence=3600), 9, proven=False)
    assert (v.scope, v.sentence, v.record) == (Scope.SIP, 100, 3600)


def test_proven_evidence_jails_everything_and_grows():
    from pbxhost.autoban.policy import Scope

    v = on_event(S, Standing(times=(1, 2, 3)), 4, proven=True)
    assert (v.action, v.scope, v.sentence) == (Action.JAIL, Scope.ALL, 100)
    v = on_event(S, Standing(sentence=100), 9, proven=True)
    assert (v.scope, v.sentence, v.record) == (Scope.ALL, 600, 600)
    # a sipjailed address that now proves itself (TCP) is jailed whole, grown
    v = on_event(S, Standing(sipjailed=True, sentence=100), 5, proven=True)
    assert (v.action, v.scope, v.sentence) == (Action.JAIL, Scope.ALL, 600)
