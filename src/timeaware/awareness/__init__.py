"""awareness"""
