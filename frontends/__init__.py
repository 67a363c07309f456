"""llmc.frontends"""
