"""The GIL is released while the engine computes, and Ctrl-C (SIGINT) interrupts it."""

import _thread
import threading
import time

import pytest

PROMPT = "Once upon a time, there was a"
# Time allowed between the interrupt and KeyboardInterrupt reaching the caller: the caller
# checks for signals every 50 ms, then waits for the generation to stop (one token); the rest
# is slack for a busy machine.
INTERRUPT_WITHIN_S = 2.0


class Counter(threading.Thread):
    """Counts in pure Python while the main thread calls into Ember."""

    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.count += 1


def test_other_threads_run_during_generate(model):
    counter = Counter()
    counter.start()
    time.sleep(0.05)
    start = counter.count
    t0 = time.monotonic()
    model.generate(PROMPT, max_tokens=32, ignore_eos=True)
    elapsed = time.monotonic() - t0
    advanced = counter.count - start
    counter.stop.set()
    counter.join()
    # With the GIL held for the whole call the counter would stand still.
    assert advanced > 10_000, f"the counter advanced {advanced} times in {elapsed:.2f}s"


def test_concurrent_generations_share_the_model(model):
    kwargs = dict(temperature=0.8, seed=3, max_tokens=16, ignore_eos=True)
    expected = model.generate(PROMPT, **kwargs)
    results = [None, None]

    def worker(i):
        results[i] = model.generate(PROMPT, **kwargs)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected, expected]


def interrupt_after(seconds):
    sent = []

    def fire():
        sent.append(time.monotonic())
        _thread.interrupt_main()

    timer = threading.Timer(seconds, fire)
    timer.start()
    return timer, sent


def assert_interrupted(call):
    timer, sent = interrupt_after(0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
        delay = time.monotonic() - sent[0]
    finally:
        timer.cancel()
    assert delay < INTERRUPT_WITHIN_S, f"KeyboardInterrupt came {delay:.2f}s after the interrupt"


def test_ctrl_c_interrupts_a_long_generate(model):
    assert_interrupted(lambda: model.generate(PROMPT, max_tokens=100_000, ignore_eos=True))
    # The model is still usable afterwards.
    assert model.generate("The capital of France is", temperature=0, max_tokens=4).startswith(" Paris")


def test_ctrl_c_interrupts_a_stream(model):
    def read_all():
        for _ in model.generate(PROMPT, max_tokens=100_000, ignore_eos=True, stream=True):
            pass

    assert_interrupted(read_all)


def test_ctrl_c_interrupts_perplexity(model, wikitext):
    assert_interrupted(lambda: model.perplexity(wikitext, ctx=512, windows=400))
    assert model.generate("The capital of France is", temperature=0, max_tokens=4).startswith(" Paris")
