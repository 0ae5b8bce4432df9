-- /etc/orthanc/ainode.lua: forward every new source image to the AI node
function OnStoredInstance(instanceId, tags, metadata, origin)
  -- the node's results come back from AE title AINODE: they go no further
  if origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] == 'AINODE' then
    return
  end
  local modality = tags['Modality']
  if modality == 'SR' or modality == 'SEG' or modality == 'PR' or modality == 'KO' then
    return
  end
  SendToModality(instanceId, 'ainode')
end
