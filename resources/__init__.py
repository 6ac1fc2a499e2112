"""Dagster resources: one ``ConfigurableResource`` per external system."""

from resources.atlas import AtlasResource
from resources.landing import LandingZone
from resources.models import ModelStore

__all__ = ["AtlasResource", "LandingZone", "ModelStore"]
