"""De-identification. Free text: :mod:`cohortsync.deid.text` (``TextScrubber``)."""
