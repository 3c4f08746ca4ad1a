"""Celery configuration shared by the worker app (aop_it_celery) and the test that sends tasks."""

from __future__ import annotations

import os

from celery import Celery


def broker_options(broker_dir: str) -> dict:
    """kombu filesystem transport options: everything under broker_dir, processed messages dropped."""
    queue = os.path.join(broker_dir, "queue")
    return {"data_folder_in": queue, "data_folder_out": queue,
            "processed_folder": os.path.join(broker_dir, "processed"), "store_processed": False,
            "control_folder": os.path.join(broker_dir, "control"), "polling_interval": 0.02}


def make_app(broker_dir: str) -> Celery:
    """A celery app on the filesystem broker under broker_dir."""
    celery_app = Celery("aop_it_celery", broker="filesystem://")
    celery_app.conf.update(broker_transport_options=broker_options(broker_dir), task_ignore_result=True,
                           worker_enable_remote_control=False, worker_hijack_root_logger=False,
                           broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)
    return celery_app
