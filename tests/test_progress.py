"""The shared progress line: terminal vs log output, ETA arithmetic (an injected clock, so no sleeping)."""
import io

from fcfi_jax.progress import Progress, eta_seconds, format_seconds


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_format_and_eta_arithmetic():
    assert [format_seconds(s) for s in (0, 42.4, 59.6, 185, 3600, 7620)] == ["0s", "42s", "1m00s", "3m05s", "1h00m",
                                                                              "2h07m"]
    assert eta_seconds(0, 10, 5.0) is None
    assert eta_seconds(4, 10, 8.0) == 12.0          # 2 s per item, 6 left
    assert eta_seconds(12, 10, 8.0) == 0.0


def test_tty_redraws_one_line_in_place():
    clock, out = Clock(), io.StringIO()
    bar = Progress(10, "DAVIS", unit="images", stream=out, clock=clock, tty=True, every_s=0)
    clock.t += 8
    bar.update(4, info="NoC@90 3.00")
    assert out.getvalue() == "\rDAVIS: 4/10 images | NoC@90 3.00 | 8s, 2.0s/image, ETA 12s"
    clock.t += 12
    bar.update(done=10, info="NoC@90 2.50")
    bar.close()
    text = out.getvalue()
    assert text.endswith("\rDAVIS: 10/10 images | NoC@90 2.50 | 20s, 2.0s/image, done \n")  # padded over the longer line
    assert text.count("\n") == 1 and text.count("\r") == 2


def test_tty_pads_over_a_longer_previous_line():
    clock, out = Clock(), io.StringIO()
    bar = Progress(3, "x", stream=out, clock=clock, tty=True, every_s=0)
    bar.update(info="a long piece of text")
    first = out.getvalue()
    bar.update(info="")
    second = out.getvalue()[len(first):]
    assert len(second) == len(first) and second.startswith("\rx: 2/3 |")


def test_log_output_is_plain_lines_at_most_every_interval():
    clock, out = Clock(), io.StringIO()
    bar = Progress(100, "train", stream=out, clock=clock, tty=False, every_s=30)
    for _ in range(100):
        clock.t += 1
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # first update, then one per 30 s (steps 31, 61, 91), then the final one; close does not repeat it
    assert [ln.split(" | ")[0] for ln in lines] == ["train: 1/100", "train: 31/100", "train: 61/100", "train: 91/100",
                                                    "train: 100/100"]
    assert lines[1] == "train: 31/100 | 31s, 1.00/s, ETA 1m09s"
    assert lines[-1] == "train: 100/100 | 1m40s, 1.00/s, done"


def test_close_prints_the_final_state_once_and_quiet_prints_nothing():
    clock, out = Clock(), io.StringIO()
    bar = Progress(5, "y", stream=out, clock=clock, tty=False, every_s=1000)
    bar.update()
    clock.t += 1
    bar.update(2)                       # throttled
    bar.close(info="stopped early")
    bar.close()
    assert out.getvalue().splitlines() == ["y: 1/5 | 0s", "y: 3/5 | stopped early | 1s, 3.00/s, ETA 1s"]
    quiet = io.StringIO()
    with Progress(5, "z", stream=quiet, quiet=True) as q:
        q.update(5)
    assert quiet.getvalue() == ""


def test_rate_precision_follows_its_size():
    clock, out = Clock(), io.StringIO()
    bar = Progress(10_000, "r", stream=out, clock=clock, tty=False, every_s=0)
    clock.t += 2
    bar.update(5000)
    assert out.getvalue() == "r: 5000/10000 | 2s, 2500/s, ETA 2s\n"
