"""Shared test doubles of the training tests."""


class StubDashboard:
    """Records what the training loop sends to the dashboard: ``scalars_log`` [(step, values)], ``images_log``."""

    def __init__(self):
        self.scalars_log, self.images_log = [], []

    def scalars(self, step, values):
        self.scalars_log.append((step, dict(values)))

    def images(self, step, panels):
        self.images_log.append((step, panels))
