"""bnconf.adapters"""
