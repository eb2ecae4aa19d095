"""The console writer's line: epoch position against the *current* epoch's length."""
import logging

from libs.utils.events import ConsoleWriter, EventStorage


def test_console_line_uses_the_current_epoch_length(caplog):
    epoch_length = {"n": 41}
    writer = ConsoleWriter(lambda: epoch_length["n"], max_iter=100)
    with caplog.at_level(logging.INFO, logger="groundnlq"), EventStorage() as storage:
        storage.put_scalars(smoothing_hint=False, epoch=0, epoch_iter=41, time=0.5)
        storage.put_scalars(final_loss=1.25)
        writer.write()
        epoch_length["n"] = 43  # video-centric packing gave the next epoch two more batches
        storage.iter = 1
        storage.put_scalars(smoothing_hint=False, epoch=1, epoch_iter=43, time=0.5)
        writer.write()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Epoch: [000][00041/00041]") and "final_loss 1.2500" in lines[0]
    assert lines[1].startswith("Epoch: [001][00043/00043]")
