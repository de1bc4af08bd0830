"""Helpers shared by the test modules; no tests here. Helpers a plugin's tests could use live in
``rtcxfer.testing`` instead."""
