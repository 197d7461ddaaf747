"""A job's stop flag and deadline as the sampling loop checks them."""

from __future__ import annotations

import threading
import time

import pytest

from sdxl_worker.settings import Settings, SettingsError
from sdxl_worker.watch.control import JobControl, JobStopped


def test_a_stop_from_another_thread_is_seen_at_the_next_check() -> None:
    control = JobControl()
    control.check(3, 50)  # not stopped: nothing happens
    thread = threading.Thread(target=control.stop, args=("cancelled",))
    thread.start()
    thread.join()
    with pytest.raises(JobStopped, match=r"^stopped after step 4 of 50: cancelled$"):
        control.check(4, 50)
    control.stop("a later reason")  # the first reason stays
    with pytest.raises(JobStopped, match="cancelled"):
        control.check(5, 50)


def test_the_deadline_counts_from_the_jobs_start() -> None:
    control = JobControl(timeout_s=0.05)
    control.check(1, 10)
    time.sleep(0.06)
    with pytest.raises(JobStopped, match=r"after step 2 of 10: it ran past JOB_TIMEOUT_S \(0\.05 s\)"):
        control.check(2, 10)
    JobControl(timeout_s=None).check(10, 10)  # no bound


def test_the_watch_settings_come_from_their_variables() -> None:
    settings = Settings.from_env({"JOB_TIMEOUT_S": "90", "STREAM": "1", "PREVIEW_VAE_DIR": "/v/taesdxl"})
    assert (settings.watch.job_timeout_s, settings.watch.stream, settings.watch.preview_vae_dir) == (
        90.0, True, "/v/taesdxl")
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SettingsError, match="JOB_TIMEOUT_S"):
            Settings.from_env({"JOB_TIMEOUT_S": bad})
