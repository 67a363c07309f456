"""llmc.runtime"""
