"""Dagster resources: one ``ConfigurableResource`` per external system."""

from resources.atlas import AtlasResource
from resources.landing import LandingZone

__all__ = ["AtlasResource", "LandingZone"]
