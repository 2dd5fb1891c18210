(function(){
  var data = JSON.parse(document.getElementById('cell-data').textContent);
  var box = document.getElementById('details');
  function show(key){
    var c = data[key]; if(!c) return;
    var dl = document.getElementById('details-list');
    while(dl.firstChild) dl.removeChild(dl.firstChild);
    c.fields.forEach(function(f){
      var dt = document.createElement('dt'); dt.textContent = f[0];
      var dd = document.createElement('dd'); dd.textContent = f[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    document.getElementById('details-title').textContent = c.title;
    box.style.display = 'block';
  }
  document.querySelectorAll('[data-key]').forEach(function(el){
    el.addEventListener('click', function(){ show(el.getAttribute('data-key')); });
  });
  document.getElementById('details-close').addEventListener('click', function(){ box.style.display='none'; });
})();
