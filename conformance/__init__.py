"""bnconf.conformance"""
