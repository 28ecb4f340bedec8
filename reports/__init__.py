"""bnconf.reports"""
