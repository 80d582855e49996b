"""Shared test helpers: fakes and throwaway servers used by more than one test package."""
