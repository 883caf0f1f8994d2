"""Configuration: loaded once per process, passed explicitly."""

from shifter.config.site import ModuleConfig, SiteConfig, load_config, parse_config

__all__ = ["ModuleConfig", "SiteConfig", "load_config", "parse_config"]
