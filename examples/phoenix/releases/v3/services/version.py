"""Version of the whole Phoenix system; each release overlay replaces this file."""

VERSION = "3.0.0"
